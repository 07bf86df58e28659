"""Benchmark: data-parallel training steps/s, mpitrain's GradientAverager (plain and
ZeRO-1) vs PyTorch DDP (gloo).

    mpirun -n N python -m mpitrain bench dp [--batch 4] [--seq 64] [--steps 5] [--reps 3] [--json FILE]

Both sides train the same BERT-like encoder (about 22M parameters: 30522 x 384
embeddings, 6 layers of hidden 384 / ffn 1536, a token-classification head), from
the same initial weights, on the same per-rank batches, with AdamW, on the same
ranks, in the same run; blocks of steps alternate between the two so background
load hits all alike. A third side, ``zero``, is mpitrain with the AdamW state
sharded over the replicas (ZeRO-1, `dp/zero.py`). Reported (medians over repetitions):

    steps_per_s       for mpitrain, mpitrain ZeRO-1 and DDP, and their ratios
    optimizer_bytes   AdamW state per rank, unsharded and ZeRO-1
    standalone_s      all gradient buckets all-reduced back to back, without compute
                      (measured after every block of steps)
    exposed_s         per step, time spent in GradientAverager.wait() after backward
    hidden_fraction   1 - exposed_s / standalone_s: communication hidden behind backward
"""
from __future__ import annotations

import json
import statistics
import time

import torch
import torch.nn.functional as F
from mpi4py import MPI
from torch import nn

from mpitrain.bench.allreduce import init_gloo
from mpitrain.dp.grad_sync import GradientAverager
from mpitrain.dp.zero import ShardedGradients, ZeroOptimizer
from mpitrain.train.state import optimizer_state_bytes
from mpitrain.errors import UsageError

HELP = "data-parallel training: mpitrain GradientAverager vs PyTorch DDP (gloo)"


class TinyBert(nn.Module):
    """Embeddings + post-norm transformer encoder + token-classification head."""

    def __init__(self, vocab=30522, hidden=384, layers=6, heads=6, ffn=1536, max_len=512, labels=9):
        super().__init__()
        self.tok = nn.Embedding(vocab, hidden)
        self.pos = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, activation="gelu",
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(hidden, labels)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        h = self.norm(self.tok(ids) + self.pos(pos))
        return self.head(self.encoder(h))


def add_arguments(parser) -> None:
    parser.add_argument("--batch", type=int, default=4, help="sequences per rank per step")
    parser.add_argument("--seq", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per block")
    parser.add_argument("--reps", type=int, default=3, help="alternating blocks per side")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--bucket-mb", type=float, default=25.0)
    parser.add_argument("--algorithm", default="auto", choices=["auto", "shm", "ring", "mpi"])
    parser.add_argument("--compress", default=None, choices=["fp16", "bf16"])
    parser.add_argument("--progress", default="thread", choices=["thread", "hooks"],
                        help="how transfers advance during backward")
    parser.add_argument("--json", default=None, help="write the results to this file (rank 0)")


def make_batches(args, rank: int, count: int):
    g = torch.Generator().manual_seed(1000 + rank)
    return [(torch.randint(0, 30522, (args.batch, args.seq), generator=g),
             torch.randint(0, 9, (args.batch, args.seq), generator=g)) for _ in range(count)]


def train_steps(model, opt, batches, averager=None) -> float:
    """Run the steps; returns wall seconds (all ranks synchronised before and after).
    With ``averager`` (which sums, as the trainer's does) each replica's loss is
    divided by the number of replicas, so the sum is DDP's mean gradient."""
    comm = MPI.COMM_WORLD
    scale = 1.0 / comm.Get_size() if averager is not None else 1.0
    comm.Barrier()
    t0 = time.perf_counter()
    for ids, labels in batches:
        opt.zero_grad(set_to_none=False)
        logits = model(ids)
        (F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)) * scale).backward()
        if averager is not None:
            averager.wait()
        opt.step()
    comm.Barrier()
    return time.perf_counter() - t0


def standalone_comm(averager: GradientAverager, reps: int = 2) -> float:
    """Median seconds to all-reduce every bucket back to back, with nothing else running."""
    comm = MPI.COMM_WORLD
    times = []
    for _ in range(reps):
        comm.Barrier()
        t0 = time.perf_counter()
        with averager._lock:
            handles = [averager.reducer.iallreduce_(b.buffer) for b in averager.buckets]
            for h in handles:
                h.wait()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(args) -> int:
    comm = MPI.COMM_WORLD
    rank, n = comm.Get_rank(), comm.Get_size()
    if min(args.batch, args.seq, args.steps, args.reps) < 1:
        raise UsageError("bench dp: --batch, --seq, --steps and --reps must be >= 1")
    torch.set_num_threads(1)
    dist = init_gloo(comm)
    from torch.nn.parallel import DistributedDataParallel

    def build():
        torch.manual_seed(0)
        return TinyBert(hidden=args.hidden, layers=args.layers, heads=max(1, args.hidden // 64),
                        ffn=4 * args.hidden)

    ours, theirs, sharded = build(), build(), build()
    nparams = sum(p.numel() for p in ours.parameters())
    bucket = int(args.bucket_mb * 2**20)

    def averager_of(model, reduce_scatter=False):
        avg = GradientAverager(list(model.named_parameters()), comm, bucket_bytes=bucket,
                               algorithm=args.algorithm, compress=args.compress, progress=args.progress,
                               average=False, reduce_scatter=reduce_scatter)
        avg.broadcast_parameters()
        return avg

    averager = averager_of(ours)
    zero_averager = averager_of(sharded, reduce_scatter=True)
    ddp = DistributedDataParallel(theirs, bucket_cap_mb=args.bucket_mb)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_ddp = torch.optim.AdamW(ddp.parameters(), lr=1e-4)
    opt_zero = ZeroOptimizer(ShardedGradients(zero_averager), list(sharded.named_parameters()),
                             [{"params": list(sharded.parameters())}],
                             lambda groups: torch.optim.AdamW(groups, lr=1e-4))
    batches = make_batches(args, rank, args.steps)

    train_steps(ours, opt_ours, batches[:2], averager)          # warm-up (+ bucket rebuild)
    train_steps(sharded, opt_zero, batches[:2], zero_averager)
    train_steps(ddp, opt_ddp, batches[:2])
    t_ours, t_ddp, t_zero, exposed, hooks, standalone = [], [], [], [], [], []
    for _ in range(args.reps):
        averager.reset_timings()
        t_ours.append(train_steps(ours, opt_ours, batches, averager))
        exposed.append(averager.timings["exposed_seconds"] / averager.timings["steps"])
        hooks.append(averager.timings["hook_seconds"] / averager.timings["steps"])
        t_ddp.append(train_steps(ddp, opt_ddp, batches))
        t_zero.append(train_steps(sharded, opt_zero, batches, zero_averager))
        standalone.append(standalone_comm(averager))
    tm = dict(averager.timings)
    standalone = statistics.median(standalone)
    exposed = statistics.median(exposed)
    res = {
        "ranks": n, "params": nparams, "batch_per_rank": args.batch, "seq": args.seq,
        "algorithm": args.algorithm, "crossover_bytes": averager.reducer.crossover_bytes,
        "compress": args.compress, "buckets": tm["buckets"], "grad_bytes": tm["bytes"],
        "mpitrain_steps_per_s": args.steps / statistics.median(t_ours),
        "ddp_steps_per_s": args.steps / statistics.median(t_ddp),
        "zero_steps_per_s": args.steps / statistics.median(t_zero),
        "mpitrain_best_steps_per_s": args.steps / min(t_ours),
        "optimizer_bytes": optimizer_state_bytes(opt_ours), "zero_optimizer_bytes": opt_zero.state_bytes(),
        "ddp_best_steps_per_s": args.steps / min(t_ddp),
        "standalone_comm_s": standalone, "exposed_s": exposed,
        "hook_s": statistics.median(hooks),
        "hidden_fraction": max(0.0, min(1.0, 1.0 - exposed / standalone)) if n > 1 and standalone > 0 else 0.0,
    }
    res["speedup"] = res["mpitrain_steps_per_s"] / res["ddp_steps_per_s"]
    res["zero_speedup"] = res["zero_steps_per_s"] / res["ddp_steps_per_s"]
    res["zero_vs_plain"] = res["zero_steps_per_s"] / res["mpitrain_steps_per_s"]
    most = comm.allreduce(res["zero_optimizer_bytes"], op=MPI.MAX)
    if rank == 0:
        print(f"# dp training: {n} ranks, {nparams / 1e6:.1f}M parameters, batch {args.batch}x{args.seq} "
              f"per rank, AdamW, {args.reps} x {args.steps} steps per side, algorithm {args.algorithm}"
              f"{', compress ' + args.compress if args.compress else ''}, progress {args.progress}")
        cross = res["crossover_bytes"]
        print(f"# {res['buckets']} buckets, {res['grad_bytes'] / 2**20:.1f} MiB of gradients"
              + (f", auto crossover {cross} bytes" if args.algorithm == "auto" else ""))
        print(f"mpitrain  {res['mpitrain_steps_per_s']:.3f} steps/s (best {res['mpitrain_best_steps_per_s']:.3f})")
        print(f"DDP gloo  {res['ddp_steps_per_s']:.3f} steps/s (best {res['ddp_best_steps_per_s']:.3f})")
        print(f"speedup   {res['speedup']:.2f}x")
        print(f"ZeRO-1    {res['zero_steps_per_s']:.3f} steps/s: {res['zero_vs_plain']:.2f}x plain mpitrain, "
              f"{res['zero_speedup']:.2f}x DDP; AdamW state per rank {most / 2**20:.1f} MiB (at most) vs "
              f"{res['optimizer_bytes'] / 2**20:.1f} MiB unsharded ({most / res['optimizer_bytes']:.2f}x)")
        print(f"comm: standalone {standalone * 1e3:.1f} ms/step, exposed after backward "
              f"{exposed * 1e3:.1f} ms/step, in hooks {res['hook_s'] * 1e3:.1f} ms/step, "
              f"hidden fraction {res['hidden_fraction']:.0%}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(res, f, indent=1)
    averager.close()
    zero_averager.close()
    dist.destroy_process_group()
    return 0
