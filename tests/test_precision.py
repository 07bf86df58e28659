"""Mixed precision (`[train] precision`, `mpitrain/train/precision.py`): bf16 trains
like fp32 on the default job's model, works across a pipeline boundary and with
bf16 gradients on the wire; fp16's dynamic loss scaling (tested with the device
faked: fp32 compute on the CPU, the scaler forced on) skips an overflowing step on
every rank alike; fp16 on a CPU is a one-line error."""
import json

import numpy as np
import pytest
import torch

from mpirun import run_mpi

from mpitrain.errors import ConfigError
from mpitrain.jobfile import load_job
from mpitrain.pipeline.engine import _fp32_loss
from mpitrain.train.precision import LossScaler, autocast_context, check_device, make_scaler, unscale_gradients

DEFAULT = "mpitrain/jobs/default.toml"
SPIRALS = "examples/spirals/job.toml"


def train_run(tmp, job, n, steps, sets, dev=False, timeout=300):
    """precision_train.py under mpiexec: (result.json, {rank: {name: array}})."""
    tmp.mkdir(parents=True, exist_ok=True)
    args = ["tests/mpi_scripts/precision_train.py", tmp, job, steps] + (["--dev"] if dev else [])
    for s in [f'job.run_dir="{tmp}/run"', *sets]:
        args += ["--set", s]
    result = run_mpi(n, args, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((tmp / "result.json").read_text()), {r: dict(np.load(tmp / f"rank-{r}.npz")) for r in range(n)}


def relative(a, b):
    return abs(a - b) / abs(b)


# -- pure logic --------------------------------------------------------------------------------
def test_loss_scaler_grows_backs_off_and_round_trips():
    s = LossScaler(init_scale=1024.0, growth_interval=3)
    seen = []
    for found_inf in [False, False, False, False, True, False, False, True, True, False, False, False]:
        seen.append(s.scale)
        s.update(found_inf)
    assert seen == [1024, 1024, 1024, 2048, 2048, 1024, 1024, 1024, 512, 256, 256, 256]
    assert (s.scale, s.good_steps, s.overflows) == (512.0, 0, 3)
    other = LossScaler()
    other.load_state_dict(json.loads(json.dumps(s.state_dict())))  # the checkpoint keeps it as JSON
    assert other.state_dict() == s.state_dict()
    floor = LossScaler(init_scale=1.0, min_scale=0.25)
    for _ in range(5):
        floor.update(True)
    assert floor.scale == 0.25


def test_scaler_only_for_fp16_and_fp16_only_on_cuda():
    cfg = load_job(None, ['train.precision="fp16"', "train.loss_scale_init=128.0",
                          "train.loss_scale_growth_interval=7"])
    scaler = make_scaler(cfg.train)
    assert (scaler.scale, scaler.growth_interval) == (128.0, 7)
    assert make_scaler(load_job(None, ['train.precision="bf16"']).train) is None
    with pytest.raises(ConfigError, match=r"\[train\] precision = fp16 needs CUDA \(dynamic loss scaling\); "
                                          r"use bf16 on CPU$"):
        check_device(cfg, "cpu")
    check_device(cfg, torch.device("cuda", 0))  # the device faked: no CUDA needed to decide
    check_device(load_job(None, ['train.precision="bf16"']), "cpu")


def test_autocast_and_the_loss_in_fp32():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with autocast_context("cpu", "fp32"):
        assert torch.nn.functional.linear(x, w).dtype == torch.float32
    with autocast_context("cpu", "bf16"):
        logits = torch.nn.functional.linear(x, w)
        assert logits.dtype == torch.bfloat16
        with _fp32_loss((logits, torch.ones(2, dtype=torch.int64))) as (out, mask):
            assert out.dtype == torch.float32 and mask.dtype == torch.int64
            assert not torch.is_autocast_enabled("cpu")
            assert (out @ torch.ones(3, 3)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
    with _fp32_loss((logits,)) as (out,):  # outside autocast: untouched
        assert out is logits


def test_no_scaler_no_unscaling():
    class Model:
        scaler = None

        def named_parameters(self):
            raise AssertionError("looked at the gradients without a scaler")

    assert unscale_gradients(Model()) is False


# -- bf16 training -----------------------------------------------------------------------------
def test_bf16_reaches_fp32_loss_on_the_default_model(tmp_path):
    """The default job's model (BERT, hidden 128, 2 layers, synthetic NER), 1 process,
    10 steps of global batch 32 (`train.max_steps = 10`: the schedule fits the steps),
    fp32 and bf16 from the same start. Tolerance: the final train loss (step 10) and
    the dev loss (fp32 evaluation of the trained model) within 1% relative.
    Measured (2-core CPU without AVX-512 BF16, torch 2.13): train loss 1.9499 ->
    0.919152 (fp32) vs 0.919158 (bf16), dev 0.960136 vs 0.960138: relative
    differences 7e-6 and 2e-6; every step's train loss within 2e-4.
    Parameters, gradients and optimizer state stay fp32; the losses differ bitwise
    (bf16 really ran). On this CPU (no AVX-512 BF16 / AMX) a bf16 matmul is several
    times slower than fp32: bf16 on such a CPU saves activation memory, not time."""
    sets = ["grid.dp=1", "grid.pp=1", "train.max_steps=10", f'data.prepared_dir="{tmp_path}/prep"']
    fp32, _ = train_run(tmp_path / "fp32", DEFAULT, 1, 10, sets, dev=True)
    bf16, _ = train_run(tmp_path / "bf16", DEFAULT, 1, 10, sets + ['train.precision="bf16"'], dev=True)
    print(f"\ntrain loss fp32 {fp32['train_loss']}\n           bf16 {bf16['train_loss']}\n"
          f"dev loss fp32 {fp32['dev_loss']:.6f} bf16 {bf16['dev_loss']:.6f}; peak activation bytes "
          f"fp32 {fp32['peak_activation_bytes']} bf16 {bf16['peak_activation_bytes']}")
    assert len(fp32["train_loss"]) == len(bf16["train_loss"]) == 10
    assert fp32["train_loss"][-1] < 0.85 * fp32["train_loss"][0]  # it trained
    assert relative(bf16["train_loss"][-1], fp32["train_loss"][-1]) < 0.01
    assert relative(bf16["dev_loss"], fp32["dev_loss"]) < 0.01
    assert bf16["train_loss"] != fp32["train_loss"] and bf16["dev_loss"] != fp32["dev_loss"]
    for key in ("param_dtypes", "grad_dtypes", "optimizer_dtypes"):
        assert bf16[key] == ["torch.float32"], (key, bf16[key])
    assert bf16["peak_activation_bytes"][0] < fp32["peak_activation_bytes"][0]  # bf16 tensors kept


def test_bf16_across_stages_and_with_bf16_gradients_on_the_wire(tmp_path):
    """The spirals MLP (each layer ends in linear + GELU: its activations are bf16 under
    autocast) with bf16 on pp 2 and on dp 2 x pp 2 with `comm.compress = "bf16"`:
    bf16 activations cross the stage boundary (the receiver's shape/dtype checks
    pass), and the loss follows one bf16 process. Not bitwise: each micro-batch's
    weight gradient is rounded to bf16 before it is accumulated in fp32, so splitting
    the batch changes the rounding. Measured: final train loss within 1e-4 relative,
    parameters within 3e-3 (AdamW, 30 steps)."""
    sets = ["train.max_steps=30", 'train.precision="bf16"']
    ref, ref_params = train_run(tmp_path / "one", SPIRALS, 1, 30, sets + ["grid.dp=1", "grid.pp=1"])
    for dp, compress in [(1, "none"), (2, "bf16")]:
        got, params = train_run(tmp_path / f"dp{dp}", SPIRALS, 2 * dp, 30,
                                sets + [f"grid.dp={dp}", "grid.pp=2", f'comm.compress="{compress}"'])
        assert got["sent_dtypes"] == ["torch.bfloat16"], got["sent_dtypes"]
        assert got["param_dtypes"] == got["grad_dtypes"] == ["torch.float32"]
        assert relative(got["train_loss"][-1], ref["train_loss"][-1]) < 0.01, (got["train_loss"], ref["train_loss"])
        assert got["train_loss"][-1] < 0.95 * got["train_loss"][0]
        held = {k: v for r in params.values() for k, v in r.items()}
        assert set(held) == set(ref_params[0])
        worst = max(float(np.abs(held[k] - ref_params[0][k]).max()) for k in held)
        print(f"\ndp {dp} x pp 2, compress {compress}: final loss {got['train_loss'][-1]:.6f} vs "
              f"{ref['train_loss'][-1]:.6f}; max |parameter difference| {worst:.2e}")
        assert worst < 0.02


# -- fp16 loss scaling -------------------------------------------------------------------------
OVERFLOW_SETS = ['train.optimizer="sgd"', "train.momentum=0.9", "train.lr=0.5", "train.warmup=0.0",
                 "train.max_grad_norm=100.0", "data.train=1024"]
STEPS, INJECT = 8, 4


def overflow_run(tmp, dp, pp, *extra, sets=(), steps=STEPS):
    tmp.mkdir(parents=True, exist_ok=True)
    args = ["tests/mpi_scripts/precision_overflow.py", tmp, SPIRALS, steps, INJECT, *extra]
    for s in [f"grid.dp={dp}", f"grid.pp={pp}", f'job.run_dir="{tmp}/run"', *OVERFLOW_SETS, *sets]:
        args += ["--set", s]
    result = run_mpi(dp * pp, args, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((tmp / f"rank-{r}.json").read_text()) for r in range(dp * pp)]


@pytest.mark.parametrize("dp,pp", [(1, 2), (2, 1)], ids=["pp2", "dp2"])
def test_overflow_on_one_rank_skips_the_step_everywhere(tmp_path, dp, pp):
    """World rank 1 alone sets a gradient to inf at step 4 (after the data-parallel
    all-reduce, so no other rank sees it). Every rank skips that optimizer step, the
    scale backs off on every rank alike (1024 -> 2048 after 3 good steps -> 1024 at
    the overflow -> 2048 after 3 more), and the non-finite "stop" path (the job's
    default) is not taken. The same injection without a scaler, with
    `train.nonfinite = "skip"`, ends with bitwise the same parameters on every rank:
    scaling by a power of two and unscaling is exact."""
    scaled = overflow_run(tmp_path / "scaled", dp, pp, sets=["checkpoint.every_steps=8"])
    plain = overflow_run(tmp_path / "plain", dp, pp, "--no-scaler", sets=['train.nonfinite="skip"'])
    expected = LossScaler(init_scale=1024.0, growth_interval=3)
    scales = []
    for step in range(STEPS):
        scales.append(expected.scale)
        expected.update(step == INJECT)
    for rank, (a, b) in enumerate(zip(scaled, plain)):
        assert [e["scale"] for e in a["log"]] == scales, (rank, a["log"])
        assert [e["grad_scale"] for e in a["log"]] == scales
        assert [e["optimizer_step"] for e in a["log"]] == [s != INJECT for s in range(STEPS)], (rank, a["log"])
        assert [e["changed"] for e in a["log"]] == [s != INJECT for s in range(STEPS)], (rank, a["log"])
        assert a["scaler"] == expected.state_dict() and a["skipped_steps"] == 0
        assert [e["optimizer_step"] for e in b["log"]] == [s != INJECT for s in range(STEPS)]
        assert b["skipped_steps"] == 1
        assert a["digest"] == b["digest"], f"rank {rank}: loss-scaled training differs from fp32"
    if dp == 2:
        assert scaled[0]["digest"] == scaled[1]["digest"]  # the replicas stayed identical
    checkpoint = tmp_path / "scaled" / "run" / "checkpoints" / "step-00000008"
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["state"]["loss_scale"] == expected.state_dict()
    resumed = overflow_run(tmp_path / "resumed", dp, pp, "--load", checkpoint, steps=0)
    assert all(r["loaded"] == expected.state_dict() for r in resumed)


def test_fp16_on_cpu_is_a_one_line_error(tmp_path):
    result = run_mpi(2, ["-m", "mpitrain", "jobs/test_tiny_ner.toml", "--set", "grid.dp=2",
                         "--set", 'train.precision="fp16"', "--set", f'job.run_dir="{tmp_path}/run"',
                         "--set", f'data.prepared_dir="{tmp_path}/prep"'], timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["mpitrain: error: jobs/test_tiny_ner.toml: [train] precision = fp16 needs CUDA "
                     "(dynamic loss scaling); use bf16 on CPU"], result.stderr
    assert not (tmp_path / "run").exists()


def test_bf16_with_tensor_parallelism(tmp_path):
    """bf16 activations cross the tensor-parallel all-reduces and all-gathers (reduced
    in fp32, cast back): the tiny GPT at tp 2 in bf16 ends near its fp32 dev loss."""
    losses = {}
    for precision in ("fp32", "bf16"):
        run = tmp_path / precision
        args = ["-m", "mpitrain", "train", "jobs/test_tiny_gpt.toml"]
        for s in ["grid.tp=2", "model.n_head=4", f'train.precision="{precision}"', f'job.run_dir="{run}"',
                  f'data.prepared_dir="{tmp_path}/prep"']:
            args += ["--set", s]
        result = run_mpi(2, args, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        losses[precision] = json.loads((run / "eval_dev.json").read_text())["loss"]
    assert losses["fp32"] != losses["bf16"] and abs(losses["bf16"] / losses["fp32"] - 1) < 0.02, losses
