"""The parameter server: semi-trusted, stores the model encrypted and adds updates (DESIGN §3).

Owns jobs, rounds, uploads, the homomorphic (or ring) sum and the release requests it
sends to the KGC; everything it hands out is checkable by the others. May import
:mod:`trapdoor.crypto`, :mod:`trapdoor.protocol` and :mod:`trapdoor.service`; never the
KGC or the participant.
"""
