"""An HDF5 file opened on first use in each process, so that a dataset object
can be pickled to other ranks or workers and read there."""
from __future__ import annotations

import os
from pathlib import Path

import h5py

from ..errors import DataError


class LazyH5:
    """Base for readers of one prepared HDF5 file at `self.path`."""

    path: Path
    _file = None
    _pid = -1

    def _open(self, keep: bool = True) -> h5py.File:
        """The open file (reopened after a fork or unpickling); `keep=False` gives a
        fresh handle for the caller to close."""
        if keep and self._file is not None and self._pid == os.getpid():
            return self._file
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}:1: cannot open prepared data ({e}); "
                            "run `python -m mpitrain prepare` again") from None
        if keep:
            self._file, self._pid = f, os.getpid()
        return f

    def __getstate__(self):
        return dict(self.__dict__, _file=None, _pid=-1)

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
