"""Trapdoor FL: federated learning where neither the server nor the other parties see an update.

The package is layered. What each layer may import (``tests/unit/test_layers.py`` checks
it, and that no two modules import each other):

- :mod:`trapdoor.crypto`: the pure crypto core (BCP, fixed-base tables, vector blocks,
  fixed-point encoding, wire formats, masks, sealing, signatures). numpy, gmpy2,
  ``cryptography`` and PyJWT only: no Flask, no database, no HTTP; no other layer;
- :mod:`trapdoor.protocol`: the signed messages of each protocol step, one pure ``build``
  and one pure ``verify`` per message, shared by every party and every test fake; imports
  the crypto core only;
- :mod:`trapdoor.service`: what the three services have in common (Flask app plumbing, one
  JSON error handler, the database and its migrations runner, an HTTP client, settings);
  may import crypto and protocol, never a party or ml;
- :mod:`trapdoor.ml`: models, training, datasets and the torch adapter (numpy, optional
  torch); imports no other layer;
- :mod:`trapdoor.kgc`, :mod:`trapdoor.ps`, :mod:`trapdoor.participant`: the three parties,
  which never import each other. Each may import crypto, protocol and service; the
  participant also ml; the PS only the pure model-spec parser :mod:`trapdoor.ml.spec`, to
  check a job's model when the job is created;
- :mod:`trapdoor.flower`: Trapdoor inside Flower (a mod and a strategy; optional extra);
  may import crypto, protocol, service, ml and the participant;
- :mod:`trapdoor.demo`: a local cluster of real processes and the demo job; may import
  everything above, and only the CLI imports it;
- :mod:`trapdoor.cli`: the ``trapdoor`` command.
"""
