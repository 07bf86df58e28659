"""Every random-number generator a rank draws from, as plain arrays (nothing
pickled): Python's `random`, numpy's global generator, torch's CPU generator and
each CUDA device's. `capture()` and `restore()` are exact inverses."""
from __future__ import annotations

import random

import numpy as np
import torch


def capture() -> dict[str, np.ndarray]:
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": np.array([version, *state, -1 if gauss is None else 0], dtype=np.int64),
        "python_gauss": np.array([0.0 if gauss is None else gauss], dtype=np.float64),
        "numpy_keys": np.asarray(keys, dtype=np.uint32),
        "numpy_rest": np.array([pos, has_gauss], dtype=np.int64),
        "numpy_cached": np.array([cached], dtype=np.float64),
        "torch": torch.get_rng_state().numpy().copy(),
    }
    if kind != "MT19937":
        raise RuntimeError(f"numpy global generator {kind!r} is not MT19937")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda_{i}"] = state.numpy().copy()
    return out


def restore(saved: dict[str, np.ndarray]) -> None:
    py = [int(x) for x in saved["python"]]
    gauss = None if py[-1] == -1 else float(saved["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:-1]), gauss))
    pos, has_gauss = (int(x) for x in saved["numpy_rest"])
    np.random.set_state(("MT19937", saved["numpy_keys"].astype(np.uint32), pos, has_gauss,
                         float(saved["numpy_cached"][0])))
    torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(saved["torch"], dtype=np.uint8)))
    cuda = sorted(k for k in saved if k.startswith("cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.from_numpy(np.ascontiguousarray(saved[k], dtype=np.uint8))
                                      for k in cuda])


