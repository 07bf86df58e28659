"""Dry run: print the rank grid of a job for a given world size, without MPI.

For each rank: its grid coordinates, node and device; the members of every
data-parallel and pipeline group; and, when the job has a model, the layers each
pipeline stage holds with their parameter counts. Placement assumes ranks fill
nodes in blocks (rank // ranks-per-node), as mpirun and srun do by default."""
from __future__ import annotations

import os

from ..device import choose_device, cpu_threads
from ..failure import agree_or_exit
from ..grid import all_groups, coords_of
from ..jobfile import load_job
from ..runtime import add_job_arguments
from ..topology import check_world

HELP = "print the rank grid, groups and devices of a job (no MPI needed)"


def add_arguments(parser) -> None:
    add_job_arguments(parser, job_required=False)
    parser.add_argument("--world-size", "-n", type=int, default=0,
                        help="number of ranks to plan for (default: dp*pp*tp of the job)")
    parser.add_argument("--ranks-per-node", type=int, default=0,
                        help="ranks on each node (default: all on one node)")
    parser.add_argument("--gpus-per-node", type=int, default=-1,
                        help="visible GPUs per node (default: as seen on this machine)")
    parser.add_argument("--cores-per-node", type=int, default=0,
                        help="CPU cores per node (default: as seen on this machine)")


def device_label(cfg, node_rank: int, node_size: int, gpus: int, cores: int) -> str:
    dev = choose_device(cfg.runtime.device, node_rank, cuda_count=gpus)
    if dev.type == "cuda":
        return str(dev)
    threads = cfg.runtime.threads or cpu_threads(node_size, cores_on_node=cores, cores_bound=cores)
    return f"cpu ({threads} thread{'s' if threads != 1 else ''})"


def format_plan(cfg, world: int, per_node: int, gpus: int, cores: int) -> str:
    grid = cfg.grid.grid()
    per_node = per_node or world
    lines = [f"job {cfg.source}: {world} ranks = dp {grid.dp} x pp {grid.pp} x tp {grid.tp}, "
             f"{-(-world // per_node)} node(s) x {per_node} ranks", "",
             f"{'rank':>4}  {'dp':>3} {'pp':>3} {'tp':>3}  {'node':>4} {'local':>5}  device"]
    for r in range(world):
        c = coords_of(r, grid)
        node, local = divmod(r, per_node)
        node_size = min(per_node, world - node * per_node)
        lines.append(f"{r:>4}  {c.dp:>3} {c.pp:>3} {c.tp:>3}  {node:>4} {local:>5}  "
                     f"{device_label(cfg, local, node_size, gpus, cores)}")
    groups = [("dp", "data-parallel groups (same stage and shard, replicas 0..dp-1)"),
              ("pp", "pipeline groups (same replica and shard, stages 0..pp-1)")]
    if grid.tp > 1:
        groups.append(("tp", "tensor groups (same replica and stage, shards 0..tp-1)"))
    for kind, title in groups:
        lines += ["", title + ":"]
        lines += [f"  {i}: ranks {g}" for i, g in enumerate(all_groups(grid, kind))]
    extra = model_plan_lines(cfg)
    if extra:
        lines += [""] + extra
    return "\n".join(lines)


def model_plan_lines(cfg) -> list[str]:
    """Per-stage layers and parameter counts, once the job describes a model."""
    from ..model_plan import describe_stages

    return describe_stages(cfg)


def run(args) -> int:
    cfg = agree_or_exit(lambda: _load(args))
    gpus = args.gpus_per_node
    if gpus < 0:
        import torch
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = args.cores_per_node or os.cpu_count() or 1
    print(format_plan(cfg, args.world_size or cfg.grid.grid().size, args.ranks_per_node, gpus, cores))
    return 0


def _load(args):
    from .train import default_job

    cfg = load_job(args.job or default_job(), args.set)
    check_world(cfg.grid.grid(), args.world_size or cfg.grid.grid().size, cfg.source)
    return cfg
