"""Helpers of the checkpoint tests: run a job, crash it, resume it, read what it saved."""
import json
from pathlib import Path

import h5py
import numpy as np

from mpirun import run_mpi


def job_args(job, run_dir: Path, prep: Path, sets=()):
    args = [job, "--set", f'job.run_dir="{run_dir}"', "--set", f'data.prepared_dir="{prep}"']
    for s in sets:
        args += ["--set", s]
    return args


def train(n, job, run_dir, prep, sets=(), timeout=300):
    result = run_mpi(n, ["-m", "mpitrain", *job_args(job, run_dir, prep, sets)], timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def crash_after(k, n, job, run_dir, prep, sets=(), timeout=300):
    result = run_mpi(n, ["tests/mpi_scripts/crash_after.py", k, *job_args(job, run_dir, prep, sets)],
                     timeout=timeout)
    assert result.returncode == 17, result.stderr[-3000:]
    return result


def checkpoint_tensors(directory: Path) -> dict:
    """{key: array} of every tensor of a checkpoint, read through its manifest with
    h5py (a tensor split over tp: its pieces joined along the split)."""
    import torch

    from mpitrain.tp.sharding import Split

    manifest = json.loads((directory / "manifest.json").read_text())
    out = {}
    for key, entry in manifest["tensors"].items():
        pieces = []
        for piece in entry.get("pieces", [entry]):
            with h5py.File(directory / piece["file"], "r") as f:
                pieces.append(f[key][()])
        out[key] = pieces[0] if "pieces" not in entry else \
            Split.from_json(entry["split"]).join([torch.from_numpy(a) for a in pieces]).numpy()
    return out


def final_checkpoint(run_dir: Path) -> Path:
    root = run_dir / "checkpoints"
    return root / (root / "latest").read_text().strip()


def epoch_lines(run_dir: Path) -> list[dict]:
    """Epoch metrics without wall-clock fields."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k not in ("seconds", "tokens_per_s")}
            for x in lines if x["event"] == "epoch"]


def max_difference(a: dict, b: dict, prefix="model/") -> float:
    keys = sorted(k for k in a if k.startswith(prefix))
    assert keys == sorted(k for k in b if k.startswith(prefix))
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in keys)
