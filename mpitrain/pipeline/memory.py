"""Measure the activation memory a stage holds for backward.

`ActivationMeter` installs autograd saved-tensor hooks while a forward runs: every
tensor autograd saves for backward is counted once per storage (views and
repeated saves share one storage), parameters and buffers excluded, and
uncounted when autograd releases it (after backward). `peak` is the most bytes
held at once; `live` the bytes held now.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


class _Held:
    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor, key, meter):
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self):
        self.meter._release(self.key)


class ActivationMeter:
    def __init__(self, exclude=()):
        self.exclude = {self._key(t) for t in exclude}
        self.refs: dict[int, list[int]] = {}  # storage key -> [handles, bytes]
        self.live = 0
        self.peak = 0

    @staticmethod
    def _key(t: torch.Tensor) -> int:
        return t.untyped_storage().data_ptr()

    def reset_peak(self) -> None:
        self.peak = self.live

    def _pack(self, t: torch.Tensor):
        if t.device.type == "meta":
            return t
        key = self._key(t)
        if key in self.exclude or key == 0:
            return t
        entry = self.refs.get(key)
        if entry is None:
            nbytes = t.untyped_storage().nbytes()
            self.refs[key] = [1, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        else:
            entry[0] += 1
        return _Held(t, key, self)

    @staticmethod
    def _unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]

    @contextmanager
    def track(self):
        """Count tensors saved for backward by autograd inside this block."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
            yield
