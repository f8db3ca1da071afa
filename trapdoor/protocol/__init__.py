"""The protocol's messages: what each party builds, signs and checks at each step.

One module per step, both aggregation modes in the same step's module, each with pure
``build`` and ``verify`` functions so the KGC, the parameter server, the participant and
every test fake run the same check:

- :mod:`~trapdoor.protocol.enrolment`: the certificate the KGC signs for a subject's keys;
- :mod:`~trapdoor.protocol.token`: the challenge a subject signs to get a token;
- :mod:`~trapdoor.protocol.job`: the job terms the KGC signs, a participant's check of the
  job it is served, and where the chain of models starts (``Enc(W_0)``, or ``Z_0`` and the
  masked layout);
- :mod:`~trapdoor.protocol.commitment`: commitments and the PS-signed closed set;
- :mod:`~trapdoor.protocol.upload`: upload statements (and a masked upload's seed);
- :mod:`~trapdoor.protocol.receipt`: the PS-signed receipt for an upload;
- :mod:`~trapdoor.protocol.audit`: the aggregate every contributor recomputes, its audit
  statement, and the ``undecodable`` report;
- :mod:`~trapdoor.protocol.release_request`: the PS's release request and the KGC's checks
  (schedule, quorum, statements, re-runs);
- :mod:`~trapdoor.protocol.bundle`: the sealed release and how a contributor opens it.

The participant-signed round messages (commitments, upload statements, audits,
``undecodable`` reports) are frozen dataclasses on one base
(``trapdoor.protocol._statement.ParticipantStatement``): ``verify_*`` returns the typed body,
whose ``to_json()`` is the exact dict that was signed
(:class:`~trapdoor.protocol.commitment.Signed` puts it back in its ``{kind: body,
"signature"}`` envelope, as the PS stores it).

:mod:`~trapdoor.protocol.common` holds what they share: the error every check raises
(:class:`~trapdoor.protocol.common.ProtocolError`), the digests, the bounds.
May import :mod:`trapdoor.crypto`; never Flask, a database or HTTP.
"""
