"""Checkpoints under tensor parallelism: a tensor split over the tensor group is
saved as one piece per shard and loads on any tp that divides it, with no
conversion -- tp 2 -> 1, tp 2 -> 4 and tp 1 -> 2 give exactly the parameters and
optimizer state (SGD momentum, AdamW moments and step) that were saved; on the
same tp a resumed run is bitwise the uninterrupted one (test_checkpoint_resume.py), on another tp it ends
within 1e-6 of it; `mpitrain checkpoint` verifies every piece."""
import json
import shutil

import h5py
import numpy as np
import pytest

from checkpoints import checkpoint_tensors, crash_after, final_checkpoint, job_args, train
from mpirun import run_mpi, run_py

JOB = "jobs/test_tiny_gpt.toml"
HEADS = ["model.n_head=4"]  # so that tp = 4 divides the heads


def state_run(tmp, tp, args, sets, timeout=240):
    result = run_mpi(tp, ["tests/mpi_scripts/checkpoint_tp_state.py", *args[:-1],
                          *job_args(args[-1], tmp / f"run-{tp}", tmp / "prep", HEADS + [f"grid.tp={tp}", *sets])],
                     timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(tp, optimizer) -> (checkpoint, {key: array} the saving run held), saved after 3 steps."""
    tmp, cache = tmp_path_factory.mktemp("tp-saved"), {}

    def get(tp, optimizer):
        if (tp, optimizer) not in cache:
            where = tmp / f"tp{tp}-{optimizer}"
            where.mkdir()
            state_run(where, tp, [where / "saved.npz", "save", 3, where / "ckpt", JOB],
                      [f'train.optimizer="{optimizer}"'])
            cache[tp, optimizer] = where / "ckpt" / "step-00000003", dict(np.load(where / "saved.npz"))
        return cache[tp, optimizer]
    return get


@pytest.mark.parametrize("before,after,optimizer", [(2, 1, "sgd"), (2, 4, "sgd"), (2, 1, "adamw"), (1, 2, "sgd")],
                         ids=["tp2-to-tp1", "tp2-to-tp4", "tp2-to-tp1-adamw", "tp1-to-tp2"])
def test_checkpoint_loads_on_another_tp(saved, tmp_path, before, after, optimizer):
    ckpt, expected = saved(before, optimizer)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    pieces = [k for k, e in manifest["tensors"].items() if "pieces" in e]
    assert manifest["layout"]["tp"] == before
    if before > 1:  # the split tensors, and only those, are in pieces; their per-element optimizer state too
        assert manifest["format_version"] == 2
        assert "model/block.0.attn.c_attn.weight" in pieces and "model/block.0.ln_1.weight" not in pieces
        assert any(k.startswith("optim/") for k in pieces)
        assert all(len(manifest["tensors"][k]["pieces"]) == before for k in pieces)
    else:
        assert manifest["format_version"] == 1 and not pieces
    if optimizer == "adamw":
        assert {"optim/block.0.attn.c_attn.weight/exp_avg", "optim/block.0.attn.c_attn.weight/step"} <= set(expected)
        assert "pieces" not in manifest["tensors"]["optim/block.0.attn.c_attn.weight/step"]
    else:
        assert "optim/block.0.attn.c_attn.weight/momentum_buffer" in expected
    state_run(tmp_path, after, [tmp_path / "loaded.npz", "load", ckpt, JOB], [f'train.optimizer="{optimizer}"'])
    got = dict(np.load(tmp_path / "loaded.npz"))
    assert sorted(got) == sorted(expected)
    assert any(k.startswith("optim/") for k in got)
    worst = {k: float(np.abs(got[k].astype(np.float64) - expected[k]).max()) for k in expected}
    bad = {k: v for k, v in worst.items() if v > 1e-6}
    assert not bad, bad
    # the checkpoint, read by itself, holds the same logical tensors
    stored = checkpoint_tensors(ckpt)
    assert max(float(np.abs(stored[k].astype(np.float64) - expected[k]).max()) for k in expected) <= 1e-6


def test_checkpoint_command_verifies_every_piece(saved, tmp_path):
    ckpt, _ = saved(2, "sgd")
    shown = run_py(["-m", "mpitrain", "checkpoint", ckpt, "--tensors"], timeout=60)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "saved on dp 1 x pp 1 x tp 2 (2 ranks)" in out and "format 2" in out, out
    assert "2 pieces along dim 0: rank-00000.h5, rank-00001.h5" in out and "checksums verified" in out
    # a flipped value in one piece is found, naming the file and dataset
    bad = tmp_path / ckpt.name
    shutil.copytree(ckpt, bad)
    entry = json.loads((bad / "manifest.json").read_text())["tensors"]["model/block.0.mlp.c_fc.weight"]
    piece = entry["pieces"][1]
    with h5py.File(bad / piece["file"], "r+") as f:
        f["model/block.0.mlp.c_fc.weight"][0, 0] += 1.0
    failed = run_py(["-m", "mpitrain", "checkpoint", bad], timeout=60)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert f"{piece['file']}: dataset model/block.0.mlp.c_fc.weight: checksum mismatch" in failed.stderr


@pytest.fixture(scope="module")
def crashed_tp2(tmp_path_factory):
    """An uninterrupted tp 2 run of 2 epochs, and the same run crashed after step 5
    (its newest checkpoint: step 4)."""
    tmp = tmp_path_factory.mktemp("crashed-tp2")
    sets = HEADS + ["grid.tp=2", "train.epochs=2", "checkpoint.every_steps=4"]
    train(2, JOB, tmp / "straight", tmp / "prep", sets)
    crash_after(5, 2, JOB, tmp / "crashed", tmp / "prep", sets)
    return tmp


@pytest.mark.parametrize("tp", [1, 4])
def test_resume_on_another_tp_matches_within_1e6(crashed_tp2, tmp_path, tp):
    resumed = tmp_path / "resumed"
    shutil.copytree(crashed_tp2 / "crashed", resumed)
    again = train(tp, JOB, resumed, crashed_tp2 / "prep", HEADS + [f"grid.tp={tp}", "train.epochs=2",
                                                                     "checkpoint.every_steps=4"])
    assert "resumed from" in again.stdout and "step-00000004" in again.stdout, again.stdout[-2000:]
    a, b = checkpoint_tensors(final_checkpoint(crashed_tp2 / "straight")), checkpoint_tensors(final_checkpoint(resumed))
    assert a.keys() == b.keys()
    assert max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a) < 1e-6
