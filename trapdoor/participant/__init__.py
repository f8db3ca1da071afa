"""A participant: the client library first, the node service (and its database) second.

Owns everything a data owner runs: verifying what the PS serves, encrypting and
uploading updates, auditing, opening released models. May import :mod:`trapdoor.crypto`,
:mod:`trapdoor.protocol`, :mod:`trapdoor.service` and :mod:`trapdoor.ml`; never the KGC
or the parameter server.
"""
