"""Smoke test of `bench pipeline` on 2 ranks with a tiny model (numbers not checked)."""
import json

from mpirun import run_mpi


def test_bench_pipeline_writes_rows(tmp_path):
    out = tmp_path / "rows.json"
    proc = run_mpi(2, ["-m", "mpitrain", "bench", "pipeline", "--hidden", "32", "--seq", "8", "--batch", "2",
                       "--reps", "2", "--warmup", "1", "--json", out], timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert {(r["impl"], r["schedule"]) for r in rows} == {
        ("mpitrain", "gpipe"), ("mpitrain", "1f1b"), ("torch", "gpipe"), ("torch", "1f1b")}
    for r in rows:
        assert r["stages"] == 2 and r["microbatches"] == 8
        assert r["step_s"] > 0 and r["ideal_s"] > 0 and r["bubble_ideal"] == 1 / 9
        assert r["peak_activation_bytes"] > 0
    peak = {(r["impl"], r["schedule"]): r["peak_activation_bytes"] for r in rows}
    assert peak[("mpitrain", "1f1b")] < peak[("mpitrain", "gpipe")]
    assert "throughput_vs_torch" in next(r for r in rows if r["impl"] == "mpitrain")
