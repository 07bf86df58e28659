"""A user's own task, outside the package: classify the points of interleaved
spirals with a small MLP. Nothing in mpitrain was changed to train it.

The data is generated from the job seed, identically on every rank; the model
is a list of named layers, so it splits into pipeline stages like any other.
Train it with the job file next to this one (`task = "spirals.py:SpiralsTask"`)
or from a script (`train.py`)."""
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import mpitrain
from mpitrain import opt


@dataclass
class ModelSection:
    hidden: int = opt(64, "hidden units per layer", min=2)
    layers: int = opt(4, "hidden layers", min=1)


@dataclass
class DataSection:
    arms: int = opt(3, "spiral arms (classes)", min=2)
    train: int = opt(2048, "training points", min=1)
    dev: int = opt(512, "dev points", min=1)
    test: int = opt(512, "test points", min=1)
    noise: float = opt(0.15, "standard deviation of the noise added to each point", min=0.0)


def spiral_points(n: int, arms: int, noise: float, seed: int):
    """n points (x, y) on `arms` interleaved spirals, and each point's arm."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, arms, n)
    r = rng.uniform(0.1, 1.0, n)
    angle = 2.0 * np.pi * r + 2.0 * np.pi * label / arms
    xy = np.stack([r * np.cos(angle), r * np.sin(angle)], axis=1) + rng.normal(0.0, noise, (n, 2)) * r[:, None]
    return xy.astype(np.float32), label.astype(np.int64)


class Points:
    """A dataset: `batch(indices)` -> mpitrain.Batch; index -1 is a padding slot."""

    def __init__(self, xy, label):
        self.xy, self.label = xy, label

    def __len__(self):
        return len(self.label)

    def batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        valid = idx >= 0
        safe = np.where(valid, idx, 0)
        target = np.where(valid, self.label[safe], -100)
        return mpitrain.Batch((torch.from_numpy(self.xy[safe]),), torch.from_numpy(target), int(valid.sum()))


class Dense(nn.Module):
    """A linear layer, then GELU (except for the output layer)."""

    def __init__(self, d_in, d_out, activate=True):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.activate = activate

    def forward(self, x):
        y = self.linear(x)
        return torch.nn.functional.gelu(y) if self.activate else y


class SpiralsTask(mpitrain.Task):
    name = "spirals"
    sections = {"model": ModelSection, "data": DataSection}

    def datasets(self, cfg, prepared):
        d = cfg.data
        sizes = {"train": d.train, "dev": d.dev, "test": d.test}
        return {split: Points(*spiral_points(n, d.arms, d.noise, seed=cfg.job.seed * 10 + i))
                for i, (split, n) in enumerate(sizes.items())}

    def model(self, cfg, prepared):
        m, arms = cfg.model, cfg.data.arms
        layers = [mpitrain.LayerSpec("input", lambda: Dense(2, m.hidden))]
        layers += [mpitrain.LayerSpec(f"hidden.{i}", lambda: Dense(m.hidden, m.hidden)) for i in range(m.layers)]
        layers += [mpitrain.LayerSpec("output", lambda: Dense(m.hidden, arms, activate=False))]
        return mpitrain.Model(layers, mpitrain.TokenCrossEntropy(),
                              description=f"MLP, {m.layers} hidden layers of {m.hidden}, {arms} classes")

    def evaluate(self, trainer, split):
        """Loss and accuracy of a split, predicted on any layout."""
        def collect(logits, batch, indices):
            keep = batch.targets >= 0
            return [(int((logits.argmax(-1)[keep] == batch.targets[keep]).sum()), int(keep.sum()))]

        counts = mpitrain.predict(trainer, split, collect)
        loss = mpitrain.mean_loss(trainer, split)
        if counts is None:
            return None
        return {"loss": loss, "accuracy": sum(c for c, _ in counts) / sum(n for _, n in counts)}
