"""Trapdoor FL: federated learning where neither the server nor the other parties see an update.

The package is layered; each layer imports only the layers above it in this list
(``tests/unit/test_layers.py`` checks it):

- :mod:`trapdoor.crypto`: the pure crypto core (BCP, fixed-base tables, vector blocks,
  fixed-point encoding, wire formats, masks, sealing, signatures). numpy, gmpy2,
  ``cryptography`` and PyJWT only: no Flask, no database, no HTTP;
- :mod:`trapdoor.protocol`: the signed messages of each protocol step, one pure ``build``
  and one pure ``verify`` per message, shared by every party and every test fake;
- :mod:`trapdoor.service`: what the three services have in common (Flask app plumbing, one
  JSON error handler, the database and its migrations runner, an HTTP client);
- :mod:`trapdoor.ml`: models, training, datasets and the torch adapter (numpy; no protocol);
- :mod:`trapdoor.kgc`, :mod:`trapdoor.ps`, :mod:`trapdoor.participant`: the three parties,
  which never import each other;
- :mod:`trapdoor.demo`: a local cluster of real processes and the demo job;
- :mod:`trapdoor.cli`: the ``trapdoor`` command.
"""
