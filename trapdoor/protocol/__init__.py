"""The protocol's messages: what each party builds, signs and checks at each step.

Owns the message formats and their pure ``build``/``verify`` functions, so the KGC, the
parameter server, the participant and every test fake run the same check. May import
:mod:`trapdoor.crypto`; never Flask, a database or HTTP.
"""
