"""ZeRO-1 ([comm] zero = 1): on every layout the sharded optimizer reaches the
parameters and optimizer state of the unsharded one (AdamW with weight decay,
SGD with momentum, engaged clipping, a skipped non-finite step), holds 1/dp of
its state per rank, and its checkpoints load with or without ZeRO on another dp
(and resume bitwise). One mpiexec per layout trains both settings in-process
(tests/mpi_scripts/zero_check.py), with the same reduction for both (the ring,
or for dp2 x pp2 what large buckets take by default) so that their gradient sums
are added in the same order."""
import json
import math

import numpy as np
import pytest

from checkpoints import checkpoint_tensors
from mpirun import run_mpi

from mpitrain.errors import ConfigError
from mpitrain.jobfile import load_job

JOB = "jobs/test_tiny_gpt.toml"
TOL = 1e-6
STEPS = 4


RING = ['comm.algorithm="ring"']
LARGE = ['comm.algorithm="auto"', "comm.crossover_bytes=1"]  # what large buckets take by default (shm or ring)


def launch(tmp, n, layout, extra=(), comm=RING, timeout=420):
    args = ["tests/mpi_scripts/zero_check.py", tmp, JOB, "--steps", STEPS, *extra]
    for s in [f'data.prepared_dir="{tmp}/prep"', *comm, *layout]:
        args += ["--set", s]
    result = run_mpi(n, args, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return {r: json.loads((tmp / f"rank-{r}.json").read_text()) for r in range(n)}


def check_variants(ranks: dict, dp: int) -> None:
    for r, report in ranks.items():
        for name, v in report["variants"].items():
            where = f"rank {r} {name}"
            assert v["sharded"], where
            assert v["params"] < TOL and v["optim"] < TOL, (where, v)
            assert min(v["moved"]) > 100 * TOL, (where, v["moved"])  # the parameters did train
            whole, shard = v["bytes"]
            assert abs(shard - whole / dp) < 0.01 * whole, (where, v["bytes"])
            unsharded, sharded = v["norms"]
            assert len(unsharded) == len(sharded) == STEPS, where
            for a, b in zip(unsharded, sharded):
                assert math.isnan(b) or abs(a - b) <= 1e-6 * a, (where, v["norms"])
            if name == "clip":
                assert min(unsharded) > 0.05, (where, unsharded)  # clipping was engaged on every step
            if name == "sgd":  # a NaN in rank 0's segment: the sharded norm is NaN everywhere, the step skipped
                assert v["skipped"] == [1, 1] and math.isnan(sharded[1]), (where, v)


@pytest.fixture(scope="module")
def dp4(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp4")
    return tmp, launch(tmp, 4, ["grid.dp=4"], ["--save"])


def test_dp4_matches_unsharded(dp4):
    check_variants(dp4[1], 4)


def test_dp4_checkpoint_holds_the_unsharded_state(dp4):
    tmp = dp4[0]
    name = f"checkpoints/step-{STEPS:08d}"
    plain, zero = checkpoint_tensors(tmp / "adamw-0" / name), checkpoint_tensors(tmp / "adamw-1" / name)
    assert plain.keys() == zero.keys() and any(k.startswith("optim/") for k in zero)
    assert all(plain[k].shape == zero[k].shape for k in plain)
    assert max(float(np.abs(plain[k].astype(np.float64) - zero[k]).max()) for k in plain) < TOL
    manifests = [json.loads((tmp / d / name / "manifest.json").read_text()) for d in ("adamw-0", "adamw-1")]
    assert manifests[0]["param_groups"] == manifests[1]["param_groups"]


def test_dp2_matches_unsharded_resumes_bitwise_and_loads_dp4_checkpoints(dp4, tmp_path):
    """dp 4 checkpoints (zero 1 and zero 0) load on dp 2 with and without ZeRO: the
    optimizer state read back by name is the checkpoint's, and both go on alike."""
    name = f"checkpoints/step-{STEPS:08d}"
    sources = [dp4[0] / "adamw-1" / name, dp4[0] / "adamw-0" / name]
    extra = ["--save", "--resume"] + [a for s in sources for a in ("--load", s)]
    ranks = launch(tmp_path, 2, ["grid.dp=2"], extra)
    check_variants(ranks, 2)
    for r, report in ranks.items():
        assert report["resumed_bitwise"] == {"params": True, "optim": True}, r
        for load in report["loads"]:
            assert load["steps"] == [2, 2] and load["params"] < TOL and load["optim"] < TOL, (r, load)
    for i, source in enumerate(sources):
        saved = {k[len("optim/"):]: v for k, v in checkpoint_tensors(source).items() if k.startswith("optim/")}
        for zero in (0, 1):
            for r in ranks:
                loaded = dict(np.load(tmp_path / f"loaded-{i}-{zero}-rank-{r}.npz"))
                assert loaded.keys() == saved.keys(), (i, zero, r)
                bad = [k for k in saved if not np.array_equal(loaded[k], saved[k].astype(np.float32))]
                assert not bad, (i, zero, r, bad[:3])


def test_dp2_pp2_matches_unsharded(tmp_path):
    check_variants(launch(tmp_path, 4, ["grid.dp=2", "grid.pp=2"], ["--variants", "adamw,sgd"], LARGE), 2)


def test_tp2_dp2_matches_unsharded(tmp_path):
    check_variants(launch(tmp_path, 4, ["grid.dp=2", "grid.tp=2", "model.n_head=4"], ["--variants", "clip"]), 2)


def test_zero_with_fp16_is_a_config_error():
    with pytest.raises(ConfigError, match=r"\[comm\] zero = 1 does not support \[train\] precision = fp16"):
        load_job(JOB, ["comm.zero=1", 'train.precision="fp16"'])
    with pytest.raises(ConfigError, match="zero"):
        load_job(JOB, ["comm.zero=2"])
