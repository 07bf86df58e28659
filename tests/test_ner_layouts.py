"""The NER job trains exactly like one process on every dp x pp layout (dropout off):
parameters after k optimizer steps equal a plain single-process loop's to 1e-5."""
import numpy as np
import pytest
import torch

from mpirun import run_mpi

from mpitrain.data.sharding import epoch_indices
from mpitrain.jobfile import load_job
from mpitrain.layers import build_layer, run_layers
from mpitrain.ner import task
from mpitrain.ner.dataset import NerH5Dataset
from mpitrain.train.losses import TokenCrossEntropy
from mpitrain.train.optim import linear_schedule, make_adamw

JOB = "jobs/test_tiny_ner.toml"
TOL = 1e-5


def overrides(tmp):
    return [f'job.run_dir="{tmp}/run"', f'data.prepared_dir="{tmp}/prep"']


def reference_parameters(tmp) -> dict:
    """A plain loop: the whole model in one process, one big batch per step."""
    cfg = load_job(JOB, overrides(tmp))
    data = task.prepare(cfg)
    ds = NerH5Dataset(data.paths["train"])
    _, specs = task.model_specs(cfg, len(data.labels), data.tokenizer_dir)
    layers = [build_layer(s, cfg.job.seed) for s in specs]
    named = [(f"{s.name}.{n}", p) for s, layer in zip(specs, layers) for n, p in layer.named_parameters()]
    initial = {n: p.detach().clone().numpy() for n, p in named}
    t = cfg.train
    steps = epoch_indices(cfg.data.limit, 0, cfg.job.seed, 0, 1, t.global_batch, t.tail)
    opt = make_adamw(named, t.lr, t.weight_decay)
    sched = linear_schedule(opt, len(steps), int(round(t.warmup * len(steps))))
    loss_fn = TokenCrossEntropy()
    for indices in steps:
        ids, mask, labels = ds.batch(indices)
        loss = loss_fn(run_layers(layers, (ids, mask)), labels) / loss_fn.count(labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], t.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad()
    final = {n: p.detach().numpy() for n, p in named}
    # every tensor trained (a key bias gets no gradient: softmax ignores a constant shift)
    assert min(float(np.abs(final[n] - initial[n]).max()) for n in final if "key.bias" not in n) > 1e-4
    return final


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_parameters(tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize("dp,pp,schedule", [(1, 1, "1f1b"), (2, 1, "1f1b"), (1, 2, "gpipe"),
                                             (1, 3, "1f1b"), (2, 2, "1f1b")])
def test_layout_matches_single_process(reference, tmp_path, dp, pp, schedule):
    out = tmp_path / "params.npz"
    sets = [f"grid.dp={dp}", f"grid.pp={pp}", f'pipeline.schedule="{schedule}"'] + overrides(tmp_path)
    args = ["tests/mpi_scripts/ner_layout_train.py", out, JOB]
    for s in sets:
        args += ["--set", s]
    result = run_mpi(dp * pp, args, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    got = np.load(out)
    assert sorted(got.keys()) == sorted(reference.keys())
    worst = max(float(np.abs(got[k] - reference[k]).max()) for k in reference)
    assert worst < TOL, f"dp={dp} pp={pp}: max |difference| {worst:.2e}"
