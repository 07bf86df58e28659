"""`python -m mpitrain report RUN_DIR`: plots and a summary of a synthetic run
directory (4 ranks, dp 2 x pp 2, a resumed run with step-time breakdowns and a
trace), of an older run without breakdowns, and of a real tiny run."""
import json

import pytest

from mpirun import run_py

pytest.importorskip("matplotlib")

PLOTS = ["loss_lr.png", "dev_metric.png", "throughput.png", "step_breakdown.png", "timeline.png"]
PARTS = ["data", "compute", "dp_exposed", "dp_hidden", "tp", "pipeline_wait", "optimizer", "other"]
RANKS = 4  # rank = 2 * dp + pp
SLOW = 3   # its compute is 10% slower: the straggler


def step_breakdown(step):
    ranks = []
    for r in range(RANKS):
        pp = r % 2
        compute = (0.045 if pp == 0 else 0.056) * (1.1 if r == SLOW else 1.0) * (1 + 0.002 * (step % 7))
        wait = 0.020 if pp == 0 else 0.008
        ranks.append([0.002, compute, 0.004 + 0.001 * (r != SLOW), 0.012, 0.0, wait, 0.004, 0.001])
    mx = [max(r[i] for r in ranks) for i in range(len(PARTS))]
    return {"parts": PARTS, "ranks": ranks, "max": mx,
            "straggler": [max(range(RANKS), key=lambda k: ranks[k][i]) for i in range(len(PARTS))],
            "step_s": sum(ranks[SLOW]) - ranks[SLOW][3] + 0.002}


def simulate_step(number, t0):
    """Spans (ms) of one 1F1B step of 4 micro-batches on pp 2, dp 2: {rank: [(name, cat, start, dur, tid)]}."""
    spans, end = {}, {}
    ops = {0: ["F0", "F1", "B0", "F2", "B1", "F3", "B2", "B3"], 1: ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"]}
    for dp in range(2):
        done = {}
        out = {0: [("data", "data", t0, 1.0, 0)], 1: [("data", "data", t0, 1.0, 0)]}
        free = {0: t0 + 1.0, 1: t0 + 1.0}
        slow = 1.1 if 2 * dp + 1 == SLOW else 1.0
        pending = {0: list(ops[0]), 1: list(ops[1])}
        while pending[0] or pending[1]:
            for stage in (0, 1):
                if not pending[stage]:
                    continue
                op = pending[stage][0]
                kind, mb = op[0], int(op[1])
                dep = None if (stage, kind) in ((0, "F"), (1, "B")) else ((0, "F", mb) if stage == 1 else (1, "B", mb))
                if dep is not None and dep not in done:
                    continue
                pending[stage].pop(0)
                ready = free[stage] if dep is None else max(free[stage], done[dep] + 0.3)
                if ready > free[stage]:
                    out[stage].append((f"recv mb {mb}", "recv", free[stage], ready - free[stage], 0))
                dur = (4.0 if stage == 0 else 5.0) * (2 if kind == "B" else 1) * (slow if stage == 1 else 1)
                name = ("forward" if kind == "F" else "backward") + f" mb {mb}"
                out[stage].append((name, "compute", ready, dur, 0))
                t = ready + dur
                if (stage, kind) in ((0, "F"), (1, "B")):
                    out[stage].append((f"send mb {mb}", "send", t, 0.2, 0))
                    t += 0.2
                done[(stage, kind, mb)], free[stage] = t, t
        for stage in (0, 1):
            rank = 2 * dp + stage
            last_b = [s for s in out[stage] if s[0] == "backward mb 3"][0]
            a = last_b[2] + 0.2 * last_b[3]
            buckets = [(f"all-reduce bucket {i} (1.0 MiB)", "allreduce", a + 3.5 * i, 3.5, 1) for i in range(3)]
            finish = max(free[stage], buckets[-1][2] + buckets[-1][3])
            out[stage] += buckets
            out[stage].append(("gradient all-reduce wait", "dp_exposed", free[stage], finish - free[stage], 0))
            out[stage].append(("optimizer step", "optimizer", finish, 2.0, 0))
            spans[rank], end[rank] = out[stage], finish + 2.0
    stop = max(end.values())
    for rank in spans:
        spans[rank].append((f"step {number}", "step", t0, end[rank] - t0, 0))
    return spans, stop + 0.5


def write_trace(path, steps=(7, 8)):
    events, t = [], 0.0
    for r in range(RANKS):
        events.append({"ph": "M", "name": "process_name", "pid": r,
                       "args": {"name": f"rank {r} (dp={r // 2}, pp={r % 2}, tp=0)"}})
        events.append({"ph": "M", "name": "thread_name", "pid": r, "tid": 1, "args": {"name": "gradient all-reduce"}})
    for number in steps:
        spans, t = simulate_step(number, t)
        for rank, items in spans.items():
            for name, cat, start, dur, tid in items:
                events.append({"name": name, "cat": cat, "ph": "X", "ts": round(start * 1e3, 3),
                               "dur": round(dur * 1e3, 3), "pid": rank, "tid": tid,
                               "args": {"step": number} if cat == "step" else {}})
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))


def make_run(run, breakdown=True, trace=True, resumed=True):
    """A run of 3 epochs x 80 steps logged every 10, resumed once after step 100
    (steps 90 and 100 logged twice); best dev f1 in epoch 2."""
    run.mkdir(parents=True)
    lines, step = [], 0

    def step_line(step, epoch, shift=0.0):
        line = {"event": "step", "step": step, "epoch": epoch, "loss": 3.0 * 0.985 ** step + 0.4 + shift,
                "lr": 5e-4 * min(1.0, step / 40) * (1 - step / 260), "grad_norm": 1.5,
                "tokens_per_s": 15000.0 + 700 * ((step // 10) % 3) - (4000 if step == 10 else 0),
                "unknown_field": [1, 2]}
        if breakdown:
            line["breakdown"] = step_breakdown(step)
        return line
    dev = [{"loss": 0.62, "f1": 0.71, "precision": 0.69, "recall": 0.73, "per_type": {"PER": 0.8}},
           {"loss": 0.48, "f1": 0.83, "precision": 0.82, "recall": 0.84},
           {"loss": 0.51, "f1": 0.81, "precision": 0.80, "recall": 0.82}]
    for epoch in (1, 2, 3):
        for _ in range(8):
            step += 10
            lines.append(step_line(step, epoch))
            if resumed and step == 100:  # crashed after 100, resumed from the checkpoint at step 80
                lines += [step_line(90, 2, shift=0.05), step_line(100, 2, shift=0.05)]
        lines.append({"event": "epoch", "epoch": epoch, "train_loss": 3.0 * 0.985 ** (step - 40) + 0.4,
                      "steps": 80, "skipped_steps": 0, "seconds": 60.0, "tokens_per_s": 14200.0 + 300 * epoch,
                      "dev": dev[epoch - 1]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"event": "st')
    (run / "eval_test.json").write_text(json.dumps({"f1": 0.8, "loss": 0.5, "precision": 0.79, "recall": 0.81,
                                                    "per_type": {"PER": {"f1": 0.9}}, "name": "test"}))
    if trace:
        write_trace(run / "trace.json")
    return run


def report(*args):
    return run_py(["-m", "mpitrain", "report", *args], timeout=180, env={"MPLBACKEND": "Agg"})


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000, (path, len(data))


def test_report_writes_every_plot_and_summary(tmp_path):
    run = make_run(tmp_path / "run")
    result = report(run)
    assert result.returncode == 0, result.stderr
    for name in PLOTS:
        assert_png(run / "report" / name)
    out = result.stdout
    assert f"straggler: rank {SLOW}" in out, out
    assert "best dev f1 0.83 at epoch 2" in out, out
    assert "test: f1 0.8, loss 0.5, precision 0.79, recall 0.81" in out, out
    assert "24 step lines, last at step 240; epochs: 3 finished; resumed 1 time(s)" in out, out
    assert "pipeline wait (bubble)" in out and "trace: 2 step(s) traced, timeline of step 8 on 4 ranks" in out, out
    assert "skipped" not in out and "unreadable" not in out, out  # the half-written last line is no news


def test_missing_trace_skips_the_timeline_only(tmp_path):
    run = make_run(tmp_path / "run", trace=False, resumed=False)
    result = report(run, "--out", tmp_path / "plots")
    assert result.returncode == 0, result.stderr
    for name in PLOTS[:-1]:
        assert_png(tmp_path / "plots" / name)
    assert not (tmp_path / "plots" / "timeline.png").exists()
    assert "skipped timeline.png: no trace.json" in result.stdout, result.stdout


def test_older_run_without_breakdown(tmp_path):
    run = make_run(tmp_path / "run", breakdown=False, trace=False)
    result = report(run)
    assert result.returncode == 0, result.stderr
    for name in PLOTS[:3]:
        assert_png(run / "report" / name)
    assert "skipped step_breakdown.png: no step-time breakdown" in result.stdout, result.stdout
    assert "step time: no breakdown logged" in result.stdout


@pytest.mark.parametrize("what", ["missing", "empty"])
def test_not_a_run_dir_is_one_line_exit_2(tmp_path, what):
    path = tmp_path / "nope"
    if what == "empty":
        path.mkdir()
    result = report(path)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpitrain: error: report: ") and str(path) in lines[0], lines
    assert ("does not exist" if what == "missing" else "has no metrics.jsonl") in lines[0]


def test_without_matplotlib_one_line_exit_2(tmp_path):
    run = make_run(tmp_path / "run", trace=False)
    code = ("import sys; sys.modules['matplotlib'] = None; from mpitrain.cli import main; "
            f"sys.exit(main(['report', {str(run)!r}]))")
    result = run_py(["-c", code], timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("mpitrain: error: report: matplotlib is not installed; "
                                     "pip install 'mpitrain[report]'")
    assert not (run / "report").exists()


def test_report_on_a_real_tiny_run(tmp_path):
    train = run_py(["-m", "mpitrain", "train", "jobs/test_tiny_gpt.toml", "--set", f'job.run_dir="{tmp_path / "run"}"',
                    "--set", f'data.prepared_dir="{tmp_path / "prep"}"', "--set", "train.log_every=1"],
                   timeout=180, env={"OMP_NUM_THREADS": "1"})
    assert train.returncode == 0, train.stderr[-2000:]
    result = report(tmp_path / "run")
    assert result.returncode == 0, result.stderr
    logged = (tmp_path / "run" / "metrics.jsonl").read_text()
    for name in PLOTS[:3] + (["step_breakdown.png"] if '"breakdown"' in logged else []):
        assert_png(tmp_path / "run" / "report" / name)
    out = result.stdout
    assert "test-tiny-gpt, task gpt" in out and "best dev perplexity" in out and "test: loss" in out, out
