"""The model, the data and the training: plain Flower/PyTorch code, nothing of Trapdoor.

Each node holds partition ``partition-id`` of ``num-partitions`` of scikit-learn's
8x8 digits (an IID split, seeded), and trains a small MLP on it. Training is seeded by
the partition and the round, so a run can be compared with another one number for number.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def load_data(partition_id: int, num_partitions: int) -> tuple[DataLoader, DataLoader]:
    """This node's train and test loaders (80/20 of its share of the digits)."""
    digits = load_digits()
    X = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = np.random.default_rng(0).permutation(len(y))
    rows = np.array_split(order, num_partitions)[partition_id]
    cut = int(0.8 * len(rows))
    train = TensorDataset(X[rows[:cut]], y[rows[:cut]])
    test = TensorDataset(X[rows[cut:]], y[rows[cut:]])
    generator = torch.Generator().manual_seed(partition_id)
    return DataLoader(train, batch_size=32, shuffle=True, generator=generator), DataLoader(
        test, batch_size=256
    )


def train(net: Net, loader: DataLoader, epochs: int, lr: float, seed: int) -> float:
    """SGD with cross-entropy; the mean training loss."""
    torch.manual_seed(seed)
    loader.generator.manual_seed(seed)  # type: ignore[union-attr]
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    net.train()
    total, batches = 0.0, 0
    for _ in range(epochs):
        for X, y in loader:
            optimizer.zero_grad()
            loss = criterion(net(X), y)
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
    return total / max(batches, 1)


def test(net: Net, loader: DataLoader) -> tuple[float, float]:
    """Loss and accuracy on ``loader``."""
    criterion = nn.CrossEntropyLoss(reduction="sum")
    net.eval()
    loss, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for X, y in loader:
            out = net(X)
            loss += float(criterion(out, y))
            correct += int((out.argmax(dim=1) == y).sum())
            count += len(y)
    return loss / count, correct / count
