"""Start a job on every rank: failure handler, validated config, rank grid, logging."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import JobConfig
from .failure import agree_or_exit, install_failure_handler, set_rank_description
from .jobfile import load_job
from .log import setup_logging
from .topology import Topology, build_topology, check_world


@dataclass
class Job:
    cfg: JobConfig
    topo: Topology
    log: object

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)


def add_job_arguments(parser, job_required: bool = True) -> None:
    parser.add_argument("job", nargs=None if job_required else "?", metavar="JOB.toml",
                        help="job file (TOML)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a job-file key, typed like the file (repeatable)")
    parser.add_argument("--verbose", action="store_true", help="let every rank log, not only rank 0")


def start_job(args=None, *, job=None, overrides=(), task=None, sections=None, verbose=False) -> Job:
    """Collective: every rank loads and checks the job, then builds the grid.
    Takes parsed command-line `args` (job, set, verbose) or the same as keywords:
    a job file (or None), "section.key=value" overrides, a task (spec or object)
    and keyword sections ({"grid": {"dp": 2}})."""
    from mpi4py import MPI

    if args is not None:
        job, overrides, verbose = args.job, args.set, args.verbose
    install_failure_handler()
    world = MPI.COMM_WORLD

    def load():
        from .slurm.env import check_world as check_slurm_world

        check_slurm_world(world.Get_size())
        cfg = load_job(job, overrides, task=task, sections=sections)
        check_world(cfg.grid.grid(), world.Get_size(), cfg.source)
        return cfg

    cfg = agree_or_exit(load, world)
    topo = build_topology(cfg.grid.grid(), world, cfg.runtime.device, cfg.runtime.threads)
    set_rank_description(topo.describe)
    rank_logs = Path(cfg.run_dir) / "logs" if cfg.runtime.rank_logs else None
    log = setup_logging(topo.rank, verbose or cfg.runtime.verbose, rank_logs)
    return Job(cfg=cfg, topo=topo, log=log)
