"""Benchmark: mixed precision and activation recomputation.

    mpirun -n 2 python -m mpitrain bench precision [--models gpt,ner] [--steps 6] [--reps 3]

For the GPT job (jobs/gpt_tiny.toml) and the BERT NER job
(jobs/bert_ner_wikiann.toml, MiniLM on WikiANN), on the ranks given (dp =
ranks), in alternating blocks of `--steps` optimizer steps: fp32, bf16
(autocast), and each with `pipeline.recompute`. Reported per variant: tokens/s
(median of the blocks) and the peak bytes of activations saved for backward
(the engine's meter, max over ranks); ratios against fp32 without
recomputation.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time

HELP = "mixed precision and recomputation: tokens/s and peak memory, fp32 vs bf16, recompute on vs off"

JOBS = {"gpt": "jobs/gpt_tiny.toml", "ner": "jobs/bert_ner_wikiann.toml"}
VARIANTS = {"fp32": ['train.precision="fp32"'], "bf16": ['train.precision="bf16"'],
            "fp32 + recompute": ['train.precision="fp32"', "pipeline.recompute=true"],
            "bf16 + recompute": ['train.precision="bf16"', "pipeline.recompute=true"]}


def add_arguments(parser) -> None:
    parser.add_argument("--models", default="gpt,ner", help="comma-separated: gpt, ner")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per block")
    parser.add_argument("--reps", type=int, default=3, help="alternating blocks per variant")
    parser.add_argument("--json", default="", help="also write the results to this file")


def _block(trainer, n: int, position: int) -> tuple[float, int]:
    """(tokens/s, peak activation bytes) of n steps, over all ranks."""
    from mpi4py import MPI

    from ..train.loop import run_epoch

    world = trainer.topo.world
    world.Barrier()
    start, done, tokens, peak = time.perf_counter(), 0, 0, 0
    while done < n:
        epoch, at = divmod(position + done, trainer.steps_per_epoch)
        result = run_epoch(trainer, epoch, start=at, stop=min(trainer.steps_per_epoch, at + n - done))
        done, tokens = done + result.steps, tokens + result.tokens
        peak = max(peak, trainer.model.engine.stats.peak_activation_bytes)
    seconds = world.allreduce(time.perf_counter() - start, op=MPI.MAX)
    return tokens / seconds, world.allreduce(peak, op=MPI.MAX)


def measure(model: str, steps: int, reps: int, root: str) -> dict:
    from mpi4py import MPI

    from ..train.trainer import Trainer

    world = MPI.COMM_WORLD
    common = [f"grid.dp={world.Get_size()}", f'data.prepared_dir="{root}/prep-{model}"',
              "checkpoint.every_epoch=false", 'checkpoint.resume="never"', "train.log_every=100000"]
    rows = {}
    for i, (name, sets) in enumerate(VARIANTS.items()):
        trainer = Trainer(job_file=JOBS[model], overrides=[*common, *sets, f'job.run_dir="{root}/{model}-{i}"'])
        trainer.model.engine.track_memory(True)
        rates, peaks = [], []
        for rep in range(reps + 1):
            rate, peak = _block(trainer, steps, rep * steps)
            if rep:
                rates.append(rate)
                peaks.append(peak)
        rows[name] = {"tokens_per_s": statistics.median(rates), "peak_activation_bytes": max(peaks)}
        trainer.close()
    base = rows["fp32"]
    for row in rows.values():
        row["speed_vs_fp32"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["activations_vs_fp32"] = row["peak_activation_bytes"] / max(1, base["peak_activation_bytes"])
    return {"model": model, "job": JOBS[model], "ranks": world.Get_size(), "variants": rows}


def run(args) -> int:
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    root = world.bcast(tempfile.mkdtemp(prefix="mpitrain-bench-precision-") if world.Get_rank() == 0 else None)
    results = [measure(m, args.steps, args.reps, root) for m in args.models.split(",")]
    if world.Get_rank() != 0:
        return 0
    lines = [f"median of {args.reps} blocks of {args.steps} steps, dp {world.Get_size()}:"]
    for r in results:
        lines.append(f"{r['model']} ({r['job']}):")
        lines.append(f"  {'variant':<18} {'tokens/s':>10} {'vs fp32':>8} {'activations MiB':>16} {'vs fp32':>8}")
        for name, v in r["variants"].items():
            lines.append(f"  {name:<18} {v['tokens_per_s']:>10,.0f} {v['speed_vs_fp32']:>7.2f}x "
                         f"{v['peak_activation_bytes'] / 2**20:>16.1f} {v['activations_vs_fp32']:>7.2f}x")
    print("\n".join(lines), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
