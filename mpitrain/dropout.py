"""Dropout whose masks do not depend on the layout.

With torch's dropout the mask of an element depends on which rank draws it and
in what order, so a dp x pp x tp layout never trains like one process with
dropout on (the reason Megatron's and PyTorch's tensor-parallel tests switch it
off). Here the mask of an element is a pure function of

    (job seed, training step, the layer's global name, the call site in the layer,
     the sample's global index, the element's coordinates in the sample's
     logical tensor)

computed by a counter-based hash in torch, on whatever slice of the tensor the
rank holds. Every layout, and one process, draws the same masks.

The engine opens a `scope` (mode, seed, step, the micro-batch's sample indices)
around each micro-batch's forward and `layer` around each layer; layers call
`dropout`. Outside a scope (a user's own loop) or with mode "torch", `dropout`
is `torch.nn.functional.dropout`.

The hash: 32-bit lanes in int64 tensors, chained over the coordinates with a
"lowbias32" integer mixer (each step is an xor-shift and a multiply modulo
2^32). Coordinates are broadcast, so only the last step runs on every element.
An element is kept when its hash >= p * 2^32.
"""
from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODES = ("invariant", "torch")
_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
_state = threading.local()


@dataclass
class Scope:
    mode: str                    # "invariant" | "torch"
    seed: int
    step: int
    samples: torch.Tensor | None  # global index of each row of the micro-batch (int64)
    layer: str = ""


def active() -> Scope | None:
    return getattr(_state, "scope", None)


@contextmanager
def scope(mode: str, seed: int, step: int, samples):
    """Training forward of one micro-batch: rows are the samples `samples` (global indices)."""
    previous = active()
    ids = None if samples is None else torch.as_tensor(samples, dtype=torch.int64).reshape(-1)
    _state.scope = Scope(mode, int(seed), int(step), ids)
    try:
        yield _state.scope
    finally:
        _state.scope = previous


@contextmanager
def layer(name: str):
    """Inside one layer (its global name)."""
    s = active()
    if s is None:
        yield
        return
    previous, s.layer = s.layer, name
    try:
        yield
    finally:
        s.layer = previous


def _mix(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int64 lanes holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def site_key(seed: int, step: int, layer_name: str, site: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{step}:{layer_name}:{site}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def keep_mask(key: int, p: float, sample: torch.Tensor, coords: list[torch.Tensor]) -> torch.Tensor:
    """Bool mask: True where kept. `sample` and each of `coords` are int64 tensors
    broadcastable to the result (global sample index, then coordinates in order)."""
    h = _mix((sample & _M32) ^ key)
    for c in coords:
        h = _mix(h ^ ((c * _GOLDEN) & _M32))
    return h >= int(round(p * 2**32))


def _axis(values: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return values.reshape(shape)


def dropout(x: torch.Tensor, p: float, training: bool, site: str, *, rows: torch.Tensor | None = None,
            coords: list | None = None) -> torch.Tensor:
    """Dropout of `x`, whose first dimension is the micro-batch's rows.

    site: names the call within the layer (e.g. "attn", "residual1").
    rows: for a tensor whose first dimension is not the batch (e.g. unpadded tokens),
        the batch row of each entry of the first dimension.
    coords: the logical coordinates of the element: a list with one entry per later
        dimension of x -- None (the index along that dimension), an int64 tensor of
        that dimension's length (e.g. global head indices of this rank's heads) --
        plus, first, any coordinates that `rows` flattened away, as int64 tensors of
        the first dimension's length (e.g. each unpadded token's position).
    """
    if not training or p == 0.0:
        return x
    s = active()
    if s is None or s.mode == "torch" or s.samples is None:
        return F.dropout(x, p, True)
    if p >= 1.0:
        return torch.zeros_like(x)
    nd, dev = x.dim(), x.device
    samples = s.samples.to(dev)
    batch_rows = torch.arange(x.shape[0], device=dev) if rows is None else rows.to(dev)
    sample = _axis(samples[batch_rows], 0, nd)
    coords = list(coords) if coords is not None else [None] * (nd - 1)
    extra = len(coords) - (nd - 1)
    if extra < 0:
        raise ValueError(f"dropout site {site!r}: {len(coords)} coordinates for a {nd}-d tensor")
    axes = [_axis(c.to(dev), 0, nd) for c in coords[:extra]]
    for d, c in enumerate(coords[extra:], start=1):
        axes.append(_axis(torch.arange(x.shape[d], device=dev) if c is None else c.to(dev), d, nd))
    keep = keep_mask(site_key(s.seed, s.step, s.layer, site), p, sample, axes)
    return torch.where(keep, x * (1.0 / (1.0 - p)), torch.zeros((), dtype=x.dtype, device=dev))


def attention(q, k, v, p: float, training: bool, *, mask=None, causal: bool = False, head_start: int = 0,
              site: str = "attention"):
    """Scaled dot-product attention ([b, heads, t, d] each) with dropout on the
    attention probabilities. Under the invariant mode the probabilities are formed
    explicitly and their masks use the logical (global head, query, key) position;
    otherwise this is `F.scaled_dot_product_attention`."""
    s = active()
    if not training or p == 0.0 or s is None or s.mode == "torch" or s.samples is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                              dropout_p=p if training else 0.0)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
    if causal:
        t, u = scores.shape[-2:]
        scores = scores.masked_fill(torch.ones(t, u, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    if mask is not None:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    heads = torch.arange(head_start, head_start + q.shape[1], device=q.device)
    probs = dropout(probs, p, True, site, coords=[heads, None, None])
    return probs @ v
