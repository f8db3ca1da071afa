"""The server side: a Flower ``Strategy`` that drives rounds through the Trapdoor PS.

:class:`TrapdoorFedAvg` is Flower's ``FedAvg`` with its arithmetic taken away. At
``start`` it asks every node who it is at the KGC (a message the mod answers itself), and
creates a Trapdoor job at the parameter server: the model's array layout and initial
weights, the nodes as its participants, masked aggregation. The PS's KGC signs the job's
terms, which every node checks before it trains. Then each Flower round is one protocol
round:

- ``configure_train`` samples nodes as ``FedAvg`` does and sends them the round's
  coordinates, with an *empty* ``arrays`` record: the server has no model to send;
- ``aggregate_train`` checks the replies (metrics and receipts, no arrays), closes the
  PS's round when only a sample was asked, and waits until the PS has summed the masked
  uploads and the KGC has released the round to its contributors; it aggregates the
  train metrics as ``FedAvg`` does, and never any parameters;
- ``configure_evaluate`` and ``aggregate_evaluate`` are ``FedAvg``'s, with an empty
  ``arrays`` record: each node evaluates the model it opened; metrics are weighted by
  ``num-examples``.

What the server never gets: an update, a model, an array. Server-side evaluation
(``evaluate_fn``) cannot work by design and is refused. A node that was not sampled in
round ``t`` cannot open ``W_{t+1}``, so it takes no further part in the job (the
protocol's rule: only contributors receive a round's model).
"""

from __future__ import annotations

import base64
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from trapdoor.flower.messages import (
    HELLO,
    JOB_ID,
    NUM_EXAMPLES,
    PHASE,
    PS_SUBJECT,
    PS_URL,
    REPLY,
    ROUND,
    SUBJECT_ID,
    arrays_of,
    layout_of,
)
from trapdoor.service.http import ServiceClient, ServiceError

__all__ = ["TrapdoorFedAvg", "TrapdoorStrategyError"]

log = logging.getLogger(__name__)


class TrapdoorStrategyError(RuntimeError):
    """The job could not be created, or a round failed at the PS."""


class TrapdoorFedAvg(FedAvg):
    """``FedAvg`` whose aggregation happens, masked, at a Trapdoor parameter server.

    ``ps_url`` and ``ps_admin_token`` reach the PS as its operator. ``job_id`` names the
    job (default: ``flower-`` and random hex); ``quorum`` is the fewest uploads a round
    may be released with (default: every node sampled); ``round_timeout`` bounds the wait
    for each release. ``aggregation`` is ``"masked"`` (one message per node and round)
    or ``"bcp"`` (the patent's form: train and commit, then upload, then audit, each its
    own message, the PS's phases in between). The other arguments are ``FedAvg``'s;
    ``min_available_nodes`` is also the number of nodes the job waits for at ``start``:
    every node connected then is one of its participants (no other can join it later).
    """

    def __init__(
        self,
        *,
        ps_url: str,
        ps_admin_token: str,
        job_id: str | None = None,
        quorum: int | None = None,
        round_timeout: float = 600.0,
        poll_seconds: float = 0.2,
        aggregation: str = "masked",
        clip_bound: float = 16.0,
        model_bound: float = 32.0,
        sleep: Callable[[float], None] = time.sleep,
        **fedavg: Any,
    ) -> None:
        super().__init__(**fedavg)
        if aggregation not in ("masked", "bcp"):
            raise ValueError("aggregation is 'masked' or 'bcp'")
        self.aggregation = aggregation
        self._grid: Grid | None = None
        self.ps_url = ps_url.rstrip("/")
        self._ps = ServiceClient(self.ps_url, token=ps_admin_token)
        self.job_id = job_id or f"flower-{secrets.token_hex(4)}"
        self.quorum = quorum
        self.round_timeout = round_timeout
        self.poll_seconds = poll_seconds
        self.clip_bound = clip_bound
        self.model_bound = model_bound
        self._sleep = sleep
        #: Flower node id -> KGC subject id, from each node's hello.
        self.subjects: dict[int, str] = {}
        self._ps_subject: str | None = None

    # ------------------------------------------------------------------ the job

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Create the job at the PS, then run ``num_rounds`` rounds through it."""
        if evaluate_fn is not None:
            raise TrapdoorStrategyError(
                "server-side evaluation cannot work: the Flower server never has the model "
                "(evaluate on the nodes: fraction_evaluate > 0)"
            )
        examples = self._hello(grid, timeout)
        self._create_job(initial_arrays, examples, num_rounds)
        # Flower logs the initial arrays' sizes and keeps them as the result's arrays: an
        # empty record, since the server holds no model once the job exists.
        return super().start(
            grid,
            ArrayRecord(),
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
        )

    def _hello(self, grid: Grid, timeout: float) -> dict[str, int]:
        """Every connected node's KGC subject id (and example count, if it says), once
        ``min_available_nodes`` are connected: they are the job's participants."""
        deadline = time.monotonic() + timeout
        nodes = list(grid.get_node_ids())
        while len(nodes) < self.min_available_nodes:
            if time.monotonic() > deadline:
                raise TrapdoorStrategyError(
                    f"{len(nodes)} nodes connected, fewer than min_available_nodes "
                    f"{self.min_available_nodes}"
                )
            self._sleep(self.poll_seconds)
            nodes = list(grid.get_node_ids())
        asks = [
            Message(
                content=RecordDict({"config": ConfigRecord({HELLO: True})}),
                dst_node_id=node,
                message_type=MessageType.TRAIN,  # the app has a train function: see the mod
            )
            for node in nodes
        ]
        examples: dict[str, int] = {}
        for reply in grid.send_and_receive(asks, timeout=timeout):
            if reply.has_error():
                raise TrapdoorStrategyError(
                    f"node {reply.metadata.src_node_id} did not say who it is: {reply.error.reason}"
                )
            answer = reply.content[REPLY]
            assert isinstance(answer, ConfigRecord)
            subject = str(answer[SUBJECT_ID])
            self.subjects[reply.metadata.src_node_id] = subject
            examples[subject] = int(answer.get(NUM_EXAMPLES, 1))  # type: ignore[arg-type]
        if len(set(self.subjects.values())) != len(self.subjects):
            raise TrapdoorStrategyError("two nodes share one Trapdoor identity")
        return examples

    def _create_job(
        self, initial: ArrayRecord, examples: Mapping[str, int], num_rounds: int
    ) -> None:
        layout = layout_of(initial)
        weights = layout.flatten(arrays_of(initial)).astype("<f8")
        subjects = sorted(examples)
        definition = {
            "job_id": self.job_id,
            "model": layout.spec(),
            "initial_weights": base64.urlsafe_b64encode(weights.tobytes()).decode().rstrip("="),
            "training": {},
            "participants": [{"subject_id": s, "num_samples": examples[s]} for s in subjects],
            "quorum": self.quorum or len(subjects),
            "rounds": num_rounds,
            "aggregation": self.aggregation,
            "encoding": (
                {"clip_bound": self.clip_bound, "model_bound": self.model_bound}
                if self.aggregation == "masked"
                else {"clip_bound": self.clip_bound}
            ),
        }
        try:
            self._ps_subject = str(self._ps.get_json("/v1/info", auth=False)["subject_id"])
            self._ps.post_json("/v1/jobs", definition)
        except ServiceError as exc:
            raise TrapdoorStrategyError(f"the PS refused the job: {exc}") from None
        log.info(
            "Trapdoor job %s created at %s: %d participants, %d parameters, %d rounds",
            self.job_id,
            self.ps_url,
            len(subjects),
            layout.num_parameters,
            num_rounds,
        )

    def _coordinates(self, config: ConfigRecord, server_round: int) -> ConfigRecord:
        out = ConfigRecord(dict(config))
        out[JOB_ID] = self.job_id
        out[PS_URL] = self.ps_url
        out[ROUND] = server_round - 1
        if self._ps_subject is not None:
            out[PS_SUBJECT] = self._ps_subject
        return out

    # ------------------------------------------------------------------ train

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``FedAvg``'s sampling; no arrays, the round's coordinates in the config."""
        self._grid = grid  # a bcp round's later steps go through it (aggregate_train)
        return super().configure_train(
            server_round, ArrayRecord(), self._coordinates(config, server_round), grid
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Wait for the PS to release the round; the replies' metrics, averaged."""
        t = server_round - 1
        received = list(replies)
        valid = []
        for reply in received:
            if reply.has_error():
                log.warning("node %s: %s", reply.metadata.src_node_id, reply.error.reason)
                continue
            if any(isinstance(v, ArrayRecord) for v in reply.content.values()):
                raise TrapdoorStrategyError("a node sent parameters to the server: refused")
            if REPLY not in reply.content:
                log.warning("node %s sent no receipt", reply.metadata.src_node_id)
                continue
            valid.append(reply)
        if not valid:
            raise TrapdoorStrategyError(
                f"no node took part in round {t}: it cannot be released (see the nodes' errors)"
            )
        if self.aggregation == "bcp":
            valid = self._bcp_steps(server_round, valid)
        else:
            self._await(t, {"released"}, closable="open", count="uploads", expected=len(valid))
        return None, self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)

    def _await(
        self, t: int, wanted: set[str], *, closable: str | None, count: str, expected: int
    ) -> dict[str, Any]:
        """Wait until round ``t`` reaches one of ``wanted``; while it is in phase
        ``closable`` with ``expected`` messages (``count``) in, close that phase at the PS
        (only a sample was asked, so nobody else will come)."""
        path = f"/v1/jobs/{self.job_id}/rounds/{t}"
        deadline = time.monotonic() + self.round_timeout
        closed = False
        while True:
            view: dict[str, Any] = self._ps.get_json(path)
            if view["status"] in wanted:
                if view["status"] == "released":
                    log.info("Trapdoor round %d released to %s", t, ", ".join(view["contributors"]))
                return view
            if view["status"] == "failed":
                raise TrapdoorStrategyError(f"round {t} failed at the PS")
            if view["status"] == closable and not closed and view[count] >= expected > 0:
                try:
                    self._ps.post_json(f"{path}/close", {})
                    closed = True
                except ServiceError as exc:
                    if exc.code != "round-not-open":
                        raise TrapdoorStrategyError(f"closing round {t}: {exc}") from None
            if time.monotonic() > deadline:
                raise TrapdoorStrategyError(f"round {t} did not reach {sorted(wanted)} in time")
            self._sleep(self.poll_seconds)

    def _bcp_steps(self, server_round: int, committed: list[Message]) -> list[Message]:
        """A bcp round after its commitments: upload once the set is closed, audit once
        the PS has aggregated, then the release. The nodes that took every step."""
        t = server_round - 1
        self._await(
            t,
            {"committed", "closed", "released"},
            closable="open",
            count="commitments",
            expected=len(committed),
        )
        uploaded = self._step(server_round, "upload", committed)
        self._await(
            t, {"closed", "released"}, closable="committed", count="uploads", expected=len(uploaded)
        )
        audited = self._step(server_round, "audit", uploaded)
        self._await(t, {"released"}, closable=None, count="uploads", expected=0)
        return [
            r
            for r in committed
            if r.metadata.src_node_id in {a.metadata.src_node_id for a in audited}
        ]

    def _step(self, server_round: int, phase: str, nodes: list[Message]) -> list[Message]:
        """Send ``phase`` to the nodes that answered ``nodes``; the replies without error."""
        assert self._grid is not None, "configure_train runs first"
        config = self._coordinates(ConfigRecord({PHASE: phase}), server_round)
        asks = [
            Message(
                content=RecordDict({"arrays": ArrayRecord(), "config": ConfigRecord(dict(config))}),
                dst_node_id=reply.metadata.src_node_id,
                message_type=MessageType.TRAIN,  # the mod answers it; the app is not called
            )
            for reply in nodes
        ]
        ok = []
        for reply in self._grid.send_and_receive(asks, timeout=self.round_timeout):
            if reply.has_error():
                log.warning(
                    "node %s (%s): %s", reply.metadata.src_node_id, phase, reply.error.reason
                )
            elif any(isinstance(v, ArrayRecord) for v in reply.content.values()):
                raise TrapdoorStrategyError("a node sent parameters to the server: refused")
            else:
                ok.append(reply)
        return ok

    # ------------------------------------------------------------------ evaluate

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """``FedAvg``'s sampling; no arrays: each node evaluates the model it opened."""
        return super().configure_evaluate(
            server_round, ArrayRecord(), self._coordinates(config, server_round), grid
        )
