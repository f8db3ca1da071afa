"""The ClientApp: Flower's quickstart, plus one mod."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from quickstart.task import Net, load_data
from quickstart.task import test as test_fn
from quickstart.task import train as train_fn
from trapdoor.flower import trapdoor_mod

app = ClientApp(mods=[trapdoor_mod])  # the one line Trapdoor adds on the client


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the model the message carries on this node's data."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition = int(context.node_config["partition-id"])
    trainloader, _ = load_data(partition, int(context.node_config["num-partitions"]))
    server_round = int(msg.content["config"]["server-round"])
    loss = train_fn(
        model,
        trainloader,
        epochs=int(context.run_config.get("local-epochs", 1)),
        lr=float(msg.content["config"].get("lr", 0.05)),
        seed=1000 * server_round + partition,
    )
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(trainloader.dataset)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the model the message carries on this node's test data."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    partition = int(context.node_config["partition-id"])
    _, testloader = load_data(partition, int(context.node_config["num-partitions"]))
    loss, accuracy = test_fn(model, testloader)
    metrics = MetricRecord(
        {"eval_loss": loss, "eval_acc": accuracy, "num-examples": len(testloader.dataset)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


torch.set_num_threads(1)
