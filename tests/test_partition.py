"""Partitioning layers into stages, and building one stage (no MPI)."""
import itertools
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from mpitrain.errors import UsageError
from mpitrain.layers import LayerSpec, build_layer, run_layers
from mpitrain.pipeline.partition import balanced_cuts, count_parameters, partition, plan_partition
from mpitrain.pipeline.stage import Stage, StageError, check_shared_parameters

sys.path.insert(0, str(Path(__file__).parent / "mpi_scripts"))
from pipe_model import model_specs, pad, sequences  # noqa: E402


def linear_specs(widths):
    """Layers Linear(widths[i] -> widths[i+1])."""
    return [LayerSpec(f"l{i}", (lambda a, b: lambda: nn.Linear(a, b))(a, b))
            for i, (a, b) in enumerate(zip(widths, widths[1:]))]


def check_cover(bounds, n, p):
    assert len(bounds) == p
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (a, b), (c, _) in zip(bounds, bounds[1:]):
        assert a < b == c
    assert bounds[-1][0] < bounds[-1][1]


def test_uniform():
    specs = linear_specs([4] * 11)
    part = partition(specs, 4, "uniform")
    assert part.bounds == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert part.stage_params() == [60, 60, 40, 40]


@pytest.mark.parametrize("n,p", [(5, 2), (7, 3), (8, 4), (9, 5), (6, 6)])
def test_balanced_cuts_are_optimal(n, p):
    g = torch.Generator().manual_seed(n * 10 + p)
    weights = torch.randint(0, 100, (n,), generator=g).tolist()
    bounds = balanced_cuts(weights, p)
    check_cover(bounds, n, p)
    got = max(sum(weights[a:b]) for a, b in bounds)
    best = min(max(sum(weights[a:b]) for a, b in zip((0,) + cuts, cuts + (n,)))
               for cuts in itertools.combinations(range(1, n), p - 1))
    assert got == best


def test_parameters_method_balances_parameter_counts():
    specs = linear_specs([8, 64, 8, 8, 8, 8, 64, 8])
    part = partition(specs, 2, "parameters")
    check_cover(part.bounds, len(specs), 2)
    assert part.layer_params == [count_parameters(s) for s in specs]
    assert max(part.stage_params()) == min(
        max(sum(part.layer_params[:c]), sum(part.layer_params[c:])) for c in range(1, len(specs)))
    assert "params" in part.plan() and str(part.stage_params()[0]) in part.plan()


def test_parameters_are_counted_on_the_meta_device():
    # 4e10 parameters (160 GB in fp32) counted instantly, nothing allocated
    specs = [LayerSpec("huge", lambda: nn.Linear(200_000, 200_000)), LayerSpec("tiny", lambda: nn.Linear(2, 2))]
    start = time.perf_counter()
    part = partition(specs, 2, "parameters")
    assert time.perf_counter() - start < 5
    assert part.layer_params == [200_000 * 200_000 + 200_000, 6]


def test_explicit_cut_points():
    specs = linear_specs([4] * 9)
    assert partition(specs, 3, [2, 7]).bounds == [(0, 2), (2, 7), (7, 8)]
    for bad, match in [([2], "2 integer layer indices"), ([3, 3], "empty"), ([0, 4], "empty"),
                       ([5, 2], "empty"), ([2, 8], "empty"), ([1.5, 3], "integer")]:
        with pytest.raises(UsageError, match=match):
            partition(specs, 3, bad)


def test_errors():
    specs = linear_specs([4] * 4)
    with pytest.raises(UsageError, match="4 stages but the model has only 3 layers"):
        partition(specs, 4)
    with pytest.raises(UsageError, match="unknown"):
        partition(specs, 2, "random")
    with pytest.raises(UsageError, match="sample"):
        partition(specs, 2, "profile")
    with pytest.raises(UsageError, match="used twice"):
        partition(specs + [specs[0]], 2)
    with pytest.raises(UsageError, match="positive"):
        partition(specs, 0)


class Slow(nn.Module):
    def __init__(self, seconds):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.seconds = seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.lin(x)


def test_profile_isolates_the_slow_layer():
    specs = [LayerSpec(f"l{i}", (lambda s: lambda: Slow(s))(0.03 if i == 2 else 0.0)) for i in range(6)]
    part = plan_partition(specs, 3, "profile", sample=(torch.randn(2, 4),))
    assert part.bounds == [(0, 2), (2, 3), (3, 6)]
    assert part.layer_times[2] > 0.025 and max(part.layer_times[:2] + part.layer_times[3:]) < 0.02
    assert "fwd+bwd ms" in part.plan()


def test_stage_builds_only_its_layers_with_global_names():
    built = []

    def spec(name, d_in, d_out):
        def build():
            built.append(name)
            return nn.Linear(d_in, d_out)
        return LayerSpec(name, build)

    specs = [spec("a", 3, 4), spec("b", 4, 5), spec("c", 5, 6), spec("d", 6, 2)]
    part = partition(specs, 2, [3])  # counts parameters on the meta device
    built.clear()
    stage = Stage(specs, part, 1, seed=7)
    assert built == ["d"]
    assert [n for n, _ in stage.global_named_parameters()] == ["d.weight", "d.bias"]
    # same weights as when the layer is built anywhere else
    assert torch.equal(dict(stage.global_named_parameters())["d.weight"], build_layer(specs[3], 7).weight)
    with pytest.raises(UsageError, match="differs"):
        Stage(specs[:3], part, 0)


def test_stages_compose_to_the_whole_model():
    specs = model_specs()
    part = partition(specs, 3, "parameters")
    (x, mask), _ = pad(sequences(0, 3))
    out = (x, mask)
    for s in range(3):
        out = Stage(specs, part, s, seed=5)(*out)
    whole = run_layers([build_layer(s, 5) for s in specs], (x, mask))
    assert torch.equal(out[0], whole)


def test_stage_error_names_stage_microbatch_and_layer():
    specs = linear_specs([4, 5, 6])
    stage = Stage(specs, partition(specs, 2), 1)
    with pytest.raises(StageError, match=r"stage 1, micro-batch 3, layer 'l1' \(inputs: \[2, 4\] float32\)"):
        stage(torch.zeros(2, 4), mb=3)


def test_shared_parameter_across_stages_is_refused():
    shared = nn.Linear(4, 4)
    specs = [LayerSpec("embed", lambda: nn.Sequential(shared)), LayerSpec("mid", lambda: nn.Linear(4, 4)),
             LayerSpec("head", lambda: nn.Sequential(shared))]
    with pytest.raises(UsageError, match="'embed' \\(stage 0\\) and 'head' \\(stage 1\\) share"):
        partition(specs, 2, [2])
    with pytest.raises(UsageError, match="declare them tied"):
        partition(specs, 2, "parameters")
    one_stage = partition(specs, 1)
    check_shared_parameters(specs, one_stage)
    assert one_stage.layer_params == [20, 20, 20]
    stage = Stage(specs, one_stage, 0)
    assert [n for n, _ in stage.global_named_parameters()] == ["embed.0.weight", "embed.0.bias",
                                                                "mid.weight", "mid.bias"]
