"""Submit a job to Slurm: check that nodes x tasks per node equals the job's
dp*pp*tp, write the batch script into the run directory, call sbatch, and say
where the log is. `--dry-run` prints the script instead. `--array KEY=V1,V2,...`
sweeps a job-file key as a job array, one run directory per value.

The script asks Slurm for SIGUSR2 `--signal-lead` seconds before the time limit;
mpitrain then checkpoints, requeues the job, and the requeued job resumes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from ..errors import UsageError

HELP = "submit a job to Slurm (sbatch), or print its batch script (--dry-run)"


def add_arguments(parser) -> None:
    from ..runtime import add_job_arguments
    from ..slurm.script import LAUNCHERS

    add_job_arguments(parser)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--ntasks-per-node", type=int, default=0, help="default: the job's ranks / nodes")
    parser.add_argument("--gpus-per-node", type=int, default=0)
    parser.add_argument("--cpus-per-task", type=int, default=1)
    parser.add_argument("--time", default="", help="time limit, e.g. 04:00:00")
    parser.add_argument("--partition", default="")
    parser.add_argument("--account", default="")
    parser.add_argument("--launcher", choices=LAUNCHERS, default="srun",
                        help="srun (with --mpi) or mpirun inside the allocation")
    parser.add_argument("--mpi", default="pmi2", help="srun's --mpi plugin: pmi2 or pmix, as your MPI supports")
    parser.add_argument("--mpirun", default="", metavar="PATH",
                        help="launcher = mpirun: the program (default: mpirun or mpiexec on PATH, else next to python)")
    parser.add_argument("--signal-lead", type=int, default=120, metavar="SECS",
                        help="seconds before the time limit to stop, checkpoint and requeue")
    parser.add_argument("--array", default="", metavar="KEY=V1,V2,...", help="sweep a job-file key as a job array")
    parser.add_argument("--follow-ups", type=int, default=0, metavar="N",
                        help="also submit N jobs that each start when the previous one ends (afterany) and "
                             "continue the run: for sites or containers without scontrol")
    parser.add_argument("--dry-run", action="store_true", help="print the batch script, submit nothing")


def parse_array(text: str) -> tuple[str, list]:
    if not text:
        return "", []
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UsageError(f"--array {text}: expected SECTION.KEY=V1,V2,..., e.g. --array train.lr=1e-3,3e-3")
    key, values = text.split("=", 1)
    values = [v.strip() for v in values.split(",") if v.strip()]
    if len(values) < 2:
        raise UsageError(f"--array {text}: give two or more comma-separated values")
    return key.strip(), values


def build_request(args):
    from ..jobfile import load_job
    from ..slurm.script import Request

    key, values = parse_array(args.array)
    if args.follow_ups and values:
        raise UsageError("--follow-ups with --array: give one or the other (arrays are requeued with scontrol)")
    if args.follow_ups < 0:
        raise UsageError(f"--follow-ups {args.follow_ups}: give 0 or more")
    cfg = load_job(args.job, args.set)
    for v in values:  # every swept value must make a valid job
        try:
            tomllib.loads(f"v = {v}")
            typed = v
        except tomllib.TOMLDecodeError:
            typed = f'"{v}"'
        load_job(args.job, list(args.set) + [f"{key}={typed}"])
    world = cfg.grid.grid().size
    nodes = args.nodes
    if nodes < 1:
        raise UsageError(f"--nodes {nodes}: give at least 1")
    per_node = args.ntasks_per_node or -(-world // nodes)
    if nodes * per_node != world:
        g = cfg.grid
        raise UsageError(f"--nodes {nodes} x --ntasks-per-node {per_node} = {nodes * per_node} tasks, but "
                         f"{args.job} needs dp {g.dp} x pp {g.pp} x tp {g.tp} = {world} ranks; make them equal")
    run_dir = Path(cfg.run_dir).resolve()
    return Request(job_file=str(Path(args.job).resolve()), workdir=os.getcwd(), python=sys.executable,
                   name=cfg.job.name, run_dir=str(run_dir), world=world, nodes=nodes, ntasks_per_node=per_node,
                   cpus_per_task=args.cpus_per_task, gpus_per_node=args.gpus_per_node, time=args.time,
                   partition=args.partition, account=args.account, launcher=args.launcher, mpi=args.mpi,
                   signal_lead=args.signal_lead, overrides=list(args.set), array_key=key, array_values=values,
                   mpirun=args.mpirun or find_mpirun())


def find_mpirun() -> str:
    """mpirun or mpiexec on PATH, else the one installed next to this Python (the mpich wheel's)."""
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    if found:
        return found
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else "mpirun"


def sbatch(script: Path, *options: str) -> str:
    if shutil.which("sbatch") is None:
        raise UsageError("sbatch not found: submit from a Slurm login node (or start a local one: "
                         "bash slurm/local-cluster.sh start)")
    result = subprocess.run(["sbatch", "--parsable", *options, str(script)], capture_output=True, text=True,
                            timeout=120)
    if result.returncode != 0:
        message = " ".join(result.stderr.split()) or f"exit code {result.returncode}"
        raise UsageError(f"sbatch refused {script}: {message}; fix the submit options")
    return result.stdout.strip().split(";")[0]


def run(args) -> int:
    from ..failure import agree_or_exit
    from ..slurm.script import render

    request = agree_or_exit(lambda: build_request(args))
    text = render(request)
    if args.dry_run:
        print(text, end="")
        return 0
    run_dir = Path(request.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    script = run_dir / "submit.sbatch"
    script.write_text(text)
    job_id = agree_or_exit(lambda: sbatch(script))
    follow_ups, previous = [], job_id
    for _ in range(args.follow_ups):  # each resumes the run if it is not finished, else ends at once
        previous = agree_or_exit(lambda: sbatch(script, f"--dependency=afterany:{previous}",
                                                "--export=ALL,MPITRAIN_FOLLOW_UP=1"))
        follow_ups.append(previous)
    pattern = "slurm-%x-%A_%a.out" if request.array_values else "slurm-%x-%j.out"
    log = run_dir / pattern.replace("%x", request.name).replace("%j", job_id).replace("%A", job_id)
    print(f"submitted Slurm job {job_id} ({request.world} ranks): script {script}")
    print(f"log: {log}" + (" (one per array task: %a = 0, 1, ...)" if request.array_values else ""))
    print(f"follow: squeue -j {job_id}; tail -f {str(log).replace('%a', '0')}")
    if follow_ups:
        print(f"follow-up jobs (each after the previous ends): {' '.join(follow_ups)}")
    return 0
