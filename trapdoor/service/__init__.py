"""What the three services share: Flask plumbing, errors, settings, database, HTTP client, CLI.

Owns no protocol logic and no party's logic: the JSON error handler and authentication
decorators (``web``), the OpenAPI documents' JSON Schema generator (``openapi``, pure) and
the body types the services share (``schemas``), the one error hierarchy (``errors``,
pure), the settings loader (``settings``), engines, sessions and the migrations runner
(``db``), the HTTP client with retries (``http``), the helpers every command line uses
(``cli``) and the test clock.
May import Flask, SQLAlchemy, Alembic, requests, tenacity and click, and the crypto core
and protocol layers; never a party (KGC, PS, participant), ml or the demo.
"""
