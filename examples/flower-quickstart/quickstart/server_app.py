"""The ServerApp: Flower's quickstart, with the Trapdoor strategy instead of FedAvg."""

from __future__ import annotations

import json
import os

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from quickstart.task import Net
from trapdoor.flower import TrapdoorFedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    num_rounds = int(context.run_config.get("num-server-rounds", 3))
    torch.manual_seed(0)
    initial = ArrayRecord(Net().state_dict())
    strategy = TrapdoorFedAvg(  # FedAvg(...) in Flower's quickstart
        ps_url=str(
            context.run_config.get("trapdoor-ps-url") or os.environ["TRAPDOOR_FLOWER_PS_URL"]
        ),
        ps_admin_token=os.environ["TRAPDOOR_PS_ADMIN_TOKEN"],
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_available_nodes=int(context.run_config.get("num-nodes", 3)),
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=initial,
        train_config=ConfigRecord({"lr": 0.05}),
        num_rounds=num_rounds,
    )
    out = context.run_config.get("results-path") or os.environ.get("QUICKSTART_RESULTS")
    if out:
        rounds = {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()}
        with open(str(out), "w") as handle:
            json.dump({"evaluate": rounds}, handle)
