"""The Trainer's state is a plain dict that restores a run exactly; optimizer
state is keyed by global parameter names; schedules and optimizers as chosen."""
import math

import pytest
import torch

from mpirun import run_mpi

from mpitrain.jobfile import load_job
from mpitrain.train.optim import lr_factor, make_optimizer
from mpitrain.train.state import load_optimizer_state, optimizer_state


@pytest.mark.parametrize("dp,pp", [(1, 1), (2, 1), (1, 2)])
def test_resume_from_state_dict_is_bitwise(tmp_path, dp, pp):
    n = dp * pp
    result = run_mpi(n, ["tests/mpi_scripts/trainer_resume.py", "jobs/test_tiny_ner.toml", "3",
                         "--set", f"grid.dp={dp}", "--set", f"grid.pp={pp}",
                         "--set", 'train.optimizer="adamw"', "--set", "train.lr=3e-3",
                         "--set", "model.dropout=0.1", "--set", "model.attention_dropout=0.1",
                         "--set", f'job.run_dir="{tmp_path}/run"', "--set", f'data.prepared_dir="{tmp_path}/prep"'],
                     timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("resumed bitwise after 3 steps") >= 1


def test_optimizer_state_uses_global_names():
    cfg = load_job(None, sections={"train": {"optimizer": "adamw", "lr": 0.1}})
    named = [("a.weight", torch.nn.Parameter(torch.ones(3))), ("a.bias", torch.nn.Parameter(torch.zeros(3)))]
    opt = make_optimizer(named, cfg.train)
    sum(p.sum() for _, p in named).backward()
    opt.step()
    saved = optimizer_state(opt, named)
    assert set(saved["state"]) == {"a.weight", "a.bias"}
    assert [g["params"] for g in saved["param_groups"]] == [["a.weight"], ["a.bias"]]
    # restore into parameters listed in another order
    again = [("a.bias", torch.nn.Parameter(named[1][1].detach().clone())),
             ("a.weight", torch.nn.Parameter(named[0][1].detach().clone()))]
    opt2 = make_optimizer(again, cfg.train)
    load_optimizer_state(opt2, again, saved)
    assert torch.equal(opt2.state[again[1][1]]["exp_avg"], opt.state[named[0][1]]["exp_avg"])


@pytest.mark.parametrize("kind,expected", [
    ("constant", [0.0, 0.5, 1.0, 1.0, 1.0]),
    ("linear", [0.0, 0.5, 1.0, 2 / 3, 1 / 3]),
    ("cosine", [0.0, 0.5, 1.0, 0.75, 0.25]),
])
def test_schedules(kind, expected):
    got = [lr_factor(kind, s, total_steps=5, warmup_steps=2) for s in range(5)]
    assert all(math.isclose(a, b, abs_tol=1e-12) for a, b in zip(got, expected)), got


def test_sgd_with_momentum_and_decay_groups():
    cfg = load_job(None, sections={"train": {"optimizer": "sgd", "momentum": 0.9, "lr": 0.1,
                                             "weight_decay": 0.01}})
    named = [("l.weight", torch.nn.Parameter(torch.ones(2))), ("l.bias", torch.nn.Parameter(torch.ones(2)))]
    opt = make_optimizer(named, cfg.train)
    assert isinstance(opt, torch.optim.SGD)
    assert [(g["weight_decay"], g["momentum"]) for g in opt.param_groups] == [(0.01, 0.9), (0.0, 0.9)]


def test_layer_builders_may_take_the_build_context():
    from mpitrain.layers import BuildContext, LayerSpec, build_layer, takes_context

    seen = []

    def with_ctx(ctx):
        seen.append(ctx)
        return torch.nn.Linear(2, 2)

    assert takes_context(with_ctx) and not takes_context(lambda: None) and not takes_context(lambda i=1: None)
    build_layer(LayerSpec("a", with_ctx), seed=0)
    assert seen[-1].tp_size == 1 and seen[-1].tp_rank == 0 and seen[-1].device.type == "cpu"
    ctx = BuildContext(dtype=torch.float64)
    build_layer(LayerSpec("a", with_ctx), seed=0, ctx=ctx)
    assert seen[-1] is ctx
    assert isinstance(build_layer(LayerSpec("b", lambda: torch.nn.Linear(2, 2)), seed=0), torch.nn.Linear)
