"""The key generation center: the only trusted party (DESIGN §3).

Owns the BCP master key (sealed at rest), enrolment and certificates, tokens, job keys
and signed job terms, and the release of each round's model to its contributors only.
May import :mod:`trapdoor.crypto`, :mod:`trapdoor.protocol` and :mod:`trapdoor.service`;
never the parameter server or the participant.
"""
