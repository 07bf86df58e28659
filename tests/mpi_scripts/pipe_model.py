"""A small test model for pipeline tests: layers of different widths, a mask that
crosses every stage boundary, and batches of varying sequence length.

Layers take and return (hidden, mask) except the head, which returns logits.
`MaskedMix` mixes positions through a masked mean, so padding must not matter.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpitrain.layers import LayerSpec, build_layer, run_layers

IN_DIM, CLASSES = 8, 5
TIED = [("norm.lin.weight", "mix.2.w.weight")]


class Dense(nn.Module):
    def __init__(self, d_in, d_out, act=torch.tanh):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out)
        self.act = act

    def forward(self, h, mask):
        return self.act(self.lin(h)), mask


class MaskedMix(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.w = nn.Linear(d, d)
        self.u = nn.Linear(d, d, bias=False)

    def forward(self, h, mask):
        m = mask.to(h.dtype)[..., None]
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        return h + torch.tanh(self.w(h) + self.u(pooled)[:, None, :]), mask


class NormDense(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.lin = nn.Linear(d, d)

    def forward(self, h, mask):
        return self.lin(self.norm(h)), mask


class Head(nn.Module):
    def __init__(self, d, classes):
        super().__init__()
        self.lin = nn.Linear(d, classes)

    def forward(self, h, mask):
        return self.lin(h)


def model_specs() -> list[LayerSpec]:
    return [
        LayerSpec("embed", lambda: Dense(IN_DIM, 24)),
        LayerSpec("mix.0", lambda: MaskedMix(24)),
        LayerSpec("up", lambda: Dense(24, 40, F.gelu)),
        LayerSpec("mix.1", lambda: MaskedMix(40)),
        LayerSpec("down", lambda: Dense(40, 16)),
        LayerSpec("norm", lambda: NormDense(16)),
        LayerSpec("mix.2", lambda: MaskedMix(16)),
        LayerSpec("head", lambda: Head(16, CLASSES)),
    ]


class TokenLoss:
    """Summed cross-entropy over non-padding tokens (targets -100 are ignored)."""

    def count(self, targets) -> int:
        return int((targets != -100).sum())

    def __call__(self, logits, targets):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-100, reduction="sum")


def sequences(step: int, n: int, seed: int = 1234):
    """n sequences (x [L, IN_DIM], y [L]) with lengths 3..9, different every step."""
    g = torch.Generator().manual_seed(seed * 1000 + step)
    out = []
    for _ in range(n):
        length = int(torch.randint(3, 10, (1,), generator=g))
        x = torch.randn(length, IN_DIM, generator=g)
        y = torch.randint(0, CLASSES, (length,), generator=g)
        out.append((x, y))
    return out


def pad(seqs):
    """Dynamic padding to the longest sequence: ((x, mask), targets)."""
    length = max(x.shape[0] for x, _ in seqs)
    x = torch.zeros(len(seqs), length, IN_DIM)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    y = torch.full((len(seqs), length), -100, dtype=torch.long)
    for i, (xs, ys) in enumerate(seqs):
        x[i, :len(xs)], mask[i, :len(xs)], y[i, :len(ys)] = xs, 1, ys
    return (x, mask), y


def microbatches(seqs, num_mb: int):
    per = len(seqs) // num_mb
    assert per * num_mb == len(seqs)
    return [pad(seqs[i * per:(i + 1) * per]) for i in range(num_mb)]


class SGD:
    """SGD with momentum (torch.optim.SGD's update, dampening 0); avoids importing
    torch.optim, whose start-up cost dominates these short runs."""

    def __init__(self, params, lr: float, momentum: float = 0.9):
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.bufs = {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        for p in self.params:
            if p.grad is None:
                continue
            buf = self.bufs.get(id(p))
            if buf is None:
                buf = self.bufs[id(p)] = p.grad.detach().clone()
            else:
                buf.mul_(self.momentum).add_(p.grad)
            p.add_(buf, alpha=-self.lr)


def reference_train(steps: int, global_batch: int, lr: float, max_norm: float, seed: int = 0,
                    tied: bool = False):
    """Single process, whole model, one big batch per step: {global name: tensor}, losses."""
    specs = model_specs()
    layers = [build_layer(s, seed) for s in specs]
    if tied:
        layers[6].w.weight = layers[5].lin.weight
    params = list(nn.ModuleList(layers).parameters())
    opt = SGD(params, lr=lr, momentum=0.9)
    loss_fn, losses = TokenLoss(), []
    for step in range(steps):
        (x, mask), y = pad(sequences(step, global_batch))
        opt.zero_grad()
        total = loss_fn(run_layers(layers, (x, mask)), y)
        count = loss_fn.count(y)
        (total / count).backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        losses.append(float(total.detach()) / count)
    named = {f"{s.name}.{k}": v.detach().clone() for s, layer in zip(specs, layers)
             for k, v in layer.named_parameters(remove_duplicate=False)}
    return named, losses
