"""Benchmark: tensor parallelism, and what the layout-invariant dropout costs.

    mpirun -n 2 python -m mpitrain bench tp [--models gpt,ner] [--steps 6] [--reps 3]
    python -m mpitrain bench tp --memory-only [--cap-gib 16]

On the same 2 ranks and the same global batch, for the GPT job
(jobs/gpt_tiny.toml) and the BERT NER job (jobs/bert_ner_wikiann.toml, MiniLM
on WikiANN), in alternating blocks of `--steps` optimizer steps:
  * tp 2 (dp 1) against tp 1 (dp 2): median step time, and the share of tp 2's
    step spent in tensor-parallel communication (all-reduces and all-gathers of
    activations, max over ranks);
  * dropout with layout-invariant masks against torch's RNG, both at dp 2.
Then, on rank 0 alone, a memory simulation: the widest GPT (24 layers, head
size 64, vocabulary 50257, context 1024, micro-batch 4) whose per-rank memory
fits a cap at tp = 1, 2 and 4. Parameters per shard are counted exactly from
the model's own sharding (meta device); fp32 training holds weights, gradients
and Adam's two moments (16 bytes per parameter); activations are estimated
after Korthikanti et al. 2022 (s b h (10 + 24/t + 5 a s / (h t)) bytes per layer
in 16-bit, doubled for fp32), plus the vocabulary-parallel logits.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time

HELP = "tensor parallelism: step time tp 2 vs tp 1 on 2 ranks with communication share; dropout cost; memory"

JOBS = {"gpt": ("jobs/gpt_tiny.toml", ["model.dropout=0.1"]),
        "ner": ("jobs/bert_ner_wikiann.toml", ["model.dropout=0.1", "model.attention_dropout=0.1"])}
VARIANTS = {"tp1": ["grid.dp=2", "grid.tp=1"], "tp2": ["grid.dp=1", "grid.tp=2"],
            "torch dropout": ["grid.dp=2", "grid.tp=1", 'train.dropout="torch"']}


def add_arguments(parser) -> None:
    parser.add_argument("--models", default="gpt,ner", help="comma-separated: gpt, ner")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per block")
    parser.add_argument("--reps", type=int, default=3, help="alternating blocks per variant")
    parser.add_argument("--memory-only", action="store_true", help="only the memory simulation (no MPI)")
    parser.add_argument("--cap-gib", type=float, default=16.0, help="memory per rank for the simulation")
    parser.add_argument("--json", default="", help="also write the results to this file")


def _block(trainer, n: int, position: int) -> tuple[float, float]:
    """(seconds, tp communication seconds) of n steps from `position`, max over ranks."""
    from mpi4py import MPI

    from ..timing import TIMER
    from ..train.loop import run_epoch

    trainer.topo.world.Barrier()
    tp_before = TIMER.totals["tp"]
    start, done = time.perf_counter(), 0
    while done < n:
        epoch, at = divmod(position + done, trainer.steps_per_epoch)
        done += run_epoch(trainer, epoch, start=at, stop=min(trainer.steps_per_epoch, at + n - done)).steps
    seconds = time.perf_counter() - start
    return tuple(trainer.topo.world.allreduce(v, op=MPI.MAX) for v in (seconds / n, (TIMER.totals["tp"] - tp_before) / n))


def step_times(model: str, steps: int, reps: int, root: str) -> dict:
    from ..train.trainer import Trainer

    job, extra = JOBS[model]
    common = [*extra, f'data.prepared_dir="{root}/prep-{model}"', "checkpoint.every_epoch=false",
              'checkpoint.resume="never"', "train.log_every=100000", "train.max_steps=0"]
    trainers = {name: Trainer(job_file=job, overrides=[*common, *sets, f'job.run_dir="{root}/{model}-{i}"'])
                for i, (name, sets) in enumerate(VARIANTS.items())}
    times = {name: [] for name in trainers}
    comm = []
    for rep in range(reps + 1):  # block 0 warms up
        for name, trainer in trainers.items():
            step, tp_comm = _block(trainer, steps, rep * steps)
            if rep:
                times[name].append(step)
                if name == "tp2":
                    comm.append(tp_comm / step)
    for trainer in trainers.values():
        trainer.close()
    med = {name: statistics.median(v) for name, v in times.items()}
    return {"model": model, "job": job, "steps": steps, "reps": reps,
            "step_s": med, "tp2_over_tp1": med["tp2"] / med["tp1"],
            "tp2_comm_share": statistics.median(comm),
            "invariant_over_torch_dropout": med["tp1"] / med["torch dropout"]}


def gpt_memory(width: int, tp: int, layers: int = 24, vocab: int = 50257, seq: int = 1024,
               micro_batch: int = 4) -> float:
    """Estimated bytes per rank of fp32 training of a GPT of this width at tp (pp = 1)."""
    import torch

    from ..layers import BuildContext, shard_layer
    from ..model_plan import _Grid, _PlanComm
    from ..tasks.gpt.model import GPTConfig, _make

    heads = width // 64
    config = GPTConfig(vocab_size=vocab, n_positions=seq, n_embd=width, n_layer=layers, n_head=heads)
    ctx = BuildContext(tp_comm=_PlanComm(tp), grid=_Grid(tp))
    counts = {}
    for kind in ("embed", "block", "head"):
        with torch.device("meta"):
            module = _make(kind, config)
            if tp > 1:
                shard_layer(module, ctx)
        counts[kind] = sum(p.numel() for p in module.parameters())
    params = counts["embed"] + layers * counts["block"] + counts["head"]
    s, b, h, a, t = seq, micro_batch, width, heads, tp
    activations = layers * s * b * h * (10 + 24 / t + 5 * a * s / (h * t)) * 2
    logits = 2 * s * b * (-(-vocab // t)) * 4
    return params * 16 + activations + logits


def memory_table(cap_gib: float) -> list[dict]:
    cap = cap_gib * 2**30
    rows = []
    for tp in (1, 2, 4):
        best, width = None, 256
        while width <= 32768:
            if (width // 64) % tp == 0 and gpt_memory(width, tp) <= cap:
                best = width
            width += 256
        rows.append({"tp": tp, "widest": best, "gib_at_widest": gpt_memory(best, tp) / 2**30 if best else None})
    return rows


def run(args) -> int:
    results = {"memory_cap_gib": args.cap_gib}
    lines = []
    if not args.memory_only:
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        if world.Get_size() != 2:
            from ..errors import UsageError
            raise UsageError(f"bench tp: needs 2 ranks, got {world.Get_size()}; run it under mpirun -n 2")
        root = world.bcast(tempfile.mkdtemp(prefix="mpitrain-bench-tp-") if world.Get_rank() == 0 else None)
        results["step_time"] = [step_times(m, args.steps, args.reps, root) for m in args.models.split(",")]
        if world.Get_rank() != 0:
            return 0
        lines.append(f"step time on 2 ranks, median of {args.reps} blocks of {args.steps} steps:")
        lines.append(f"  {'model':<5} {'tp1 (dp2) s':>12} {'tp2 s':>8} {'tp2/tp1':>8} {'tp2 comm':>9} "
                     f"{'invariant/torch dropout':>24}")
        for r in results["step_time"]:
            st = r["step_s"]
            lines.append(f"  {r['model']:<5} {st['tp1']:>12.4f} {st['tp2']:>8.4f} {r['tp2_over_tp1']:>7.2f}x "
                         f"{r['tp2_comm_share']:>8.0%} {r['invariant_over_torch_dropout']:>23.2f}x")
    results["memory"] = memory_table(args.cap_gib)
    lines.append(f"widest GPT (24 layers, head size 64, vocabulary 50257, context 1024, micro-batch 4, fp32 + "
                 f"Adam) within {args.cap_gib:g} GiB per rank:")
    for r in results["memory"]:
        lines.append(f"  tp {r['tp']}: width {r['widest']} ({r['gib_at_widest']:.1f} GiB)")
    print("\n".join(lines), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0
