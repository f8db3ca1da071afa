"""Trapdoor inside Flower: encrypted aggregation and contributor-only release for a Flower app.

An existing Flower app changes in two places and nowhere else:

- its ``ClientApp`` gets one mod, :func:`trapdoor.flower.client.trapdoor_mod` (the
  mechanism of Flower's own ``secaggplus_mod``). On a ``train`` message the mod opens the
  model this node's previous round released to it, hands it to the unchanged training
  code as the message's ``arrays``, masks the result's update with a fresh seed sealed
  under the job's key, uploads it to the Trapdoor parameter server, and returns to
  Flower only the metrics and the PS-signed receipt: never parameters. On an
  ``evaluate`` message it opens the round's released model and evaluates it locally.
- its ``ServerApp`` runs :class:`trapdoor.flower.server.TrapdoorFedAvg`, a Flower
  ``Strategy``: it creates the job at the Trapdoor PS (whose KGC signs its terms), sends
  each round's ``train`` and ``evaluate`` messages with no arrays in them, and waits for
  the PS to release the round instead of aggregating anything. The Flower server learns
  what the PS learns: nothing of the updates or of the model.

Each Flower node is a Trapdoor participant with its own enrolled identity
(:mod:`trapdoor.flower.identities` provisions them for a simulation or a deployment).
Masked aggregation by default; ``TrapdoorFedAvg(aggregation="bcp")`` runs the patent's
form, whose commit, upload and audit steps each take their own message (docs/FLOWER.md
says what works and what cannot by design). Needs the ``flower`` extra.

May import crypto, protocol, service, ml and participant; never the KGC, the PS or the
demo.
"""

from trapdoor.flower.client import trapdoor_mod
from trapdoor.flower.server import TrapdoorFedAvg

__all__ = ["TrapdoorFedAvg", "trapdoor_mod"]
