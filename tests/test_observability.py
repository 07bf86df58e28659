"""Seeing a run: every logged step carries the step-time breakdown (max over ranks,
straggler named), and `--trace` writes one Chrome trace with a track per rank
whose spans nest properly."""
import json

import pytest

from mpirun import run_mpi

from mpitrain.timing import PARTS

JOB = "jobs/test_tiny_gpt.toml"


def train(tmp, n, *sets, trace=None):
    args = ["-m", "mpitrain", "train", JOB, "--set", f'job.run_dir="{tmp}/run"', "--set",
            f'data.prepared_dir="{tmp}/prep"', "--set", "train.log_every=2", "--set", "model.n_head=4"]
    for s in sets:
        args += ["--set", s]
    if trace:
        args += ["--trace", str(trace)]
    result = run_mpi(n, args, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["event"] == "step"], result.stdout


def check_breakdown(b, ranks):
    assert b["parts"] == list(PARTS) and len(b["ranks"]) == ranks
    for i, part in enumerate(PARTS):
        assert b["max"][i] == max(r[i] for r in b["ranks"]) and b["ranks"][b["straggler"][i]][i] == b["max"][i]
    for r in b["ranks"]:
        assert all(v >= 0 for v in r)
        accounted = sum(v for p, v in zip(PARTS, r) if p != "dp_hidden")  # dp_hidden overlaps compute
        assert accounted <= b["step_s"] * 1.05 + 1e-3, (accounted, b["step_s"])
    return dict(zip(PARTS, b["max"]))


@pytest.fixture(scope="module")
def dp2pp2(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dp2pp2")
    steps, out = train(tmp, 4, "grid.dp=2", "grid.pp=2", trace=2)
    return tmp, steps, out


def test_logged_steps_carry_the_breakdown(dp2pp2):
    tmp, steps, out = dp2pp2
    assert len(steps) == 3
    for s in steps:
        top = check_breakdown(s["breakdown"], 4)
        assert top["compute"] > 0 and top["pipeline_wait"] > 0 and top["optimizer"] > 0 and top["data"] > 0
        assert top["dp_exposed"] + top["dp_hidden"] > 0 and top["tp"] == 0
    assert "step " in out and "pipeline wait" in out  # the log line names the largest parts


def test_tensor_parallel_communication_is_its_own_part(tmp_path):
    steps, _ = train(tmp_path, 2, "grid.tp=2")
    top = check_breakdown(steps[-1]["breakdown"], 2)
    assert top["tp"] > 0 and top["pipeline_wait"] == 0 and top["dp_exposed"] == 0


def test_trace_has_one_track_per_rank_and_spans_nest(dp2pp2):
    tmp, _, out = dp2pp2
    trace = json.loads((tmp / "run" / "trace.json").read_text())
    events = trace["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(names) == [0, 1, 2, 3] and names[2] == "rank 2 (dp=0, pp=1, tp=0)"
    spans = [e for e in events if e["ph"] == "X"]
    for rank in range(4):
        mine = [e for e in spans if e["pid"] == rank]
        cats = {e["cat"] for e in mine}
        assert {"step", "data", "compute", "pipeline_wait", "optimizer", "allreduce"} <= cats, cats
        assert sum(e["cat"] == "step" for e in mine) == 2
        for tid in (0, 1):
            track = sorted((e for e in mine if e["tid"] == tid), key=lambda e: (e["ts"], -e["dur"]))
            open_ends = []
            for e in track:  # each span starts after its enclosing one and ends within it
                while open_ends and e["ts"] >= open_ends[-1] - 0.5:
                    open_ends.pop()
                if open_ends:
                    assert e["ts"] + e["dur"] <= open_ends[-1] + 1.0, (rank, tid, e)
                open_ends.append(e["ts"] + e["dur"])
        steps = [e for e in mine if e["cat"] == "step"]
        for e in mine:
            if e["cat"] == "compute":
                assert any(s["ts"] <= e["ts"] and e["ts"] + e["dur"] <= s["ts"] + s["dur"] + 1 for s in steps)
    assert "trace of 2 step(s) written" in out
