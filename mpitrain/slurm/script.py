"""Batch scripts for `mpitrain submit`: what sbatch runs, written out in full
so that a user can read it, keep it and adapt it."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from .stop import WARNING_SIGNAL

SIGNAL_NAME = WARNING_SIGNAL.name.removeprefix("SIG")
LAUNCHERS = ("srun", "mpirun")


@dataclass
class Request:
    job_file: str              # absolute path
    workdir: str               # where the job runs (relative paths of the job resolve from here)
    python: str
    name: str
    run_dir: str               # absolute; logs and (array) run directories go here
    world: int
    nodes: int
    ntasks_per_node: int
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    time: str = ""
    partition: str = ""
    account: str = ""
    launcher: str = "srun"
    mpi: str = "pmi2"
    mpirun: str = "mpirun"     # the launcher program for launcher = "mpirun"
    signal_lead: int = 120
    overrides: list = field(default_factory=list)
    array_key: str = ""
    array_values: list = field(default_factory=list)


def array_run_dir(base: str, index: int, value: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._=-]+", "_", str(value)).strip("_") or "value"
    return f"{base}/{index}-{safe}"


def render(r: Request) -> str:
    q = shlex.quote
    log = f"{r.run_dir}/slurm-%x-%A_%a.out" if r.array_values else f"{r.run_dir}/slurm-%x-%j.out"
    lines = ["#!/bin/bash",
             f"# mpitrain: {r.name} ({r.job_file}) on {r.nodes} node(s) x {r.ntasks_per_node} task(s) = "
             f"{r.world} ranks, launched with {r.launcher}.",
             "# Written by `python -m mpitrain submit`; adapt it and submit it again with sbatch.",
             f"#SBATCH --job-name={r.name}",
             f"#SBATCH --nodes={r.nodes}",
             f"#SBATCH --ntasks-per-node={r.ntasks_per_node}",
             f"#SBATCH --cpus-per-task={r.cpus_per_task}"]
    if r.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={r.gpus_per_node}")
    for key, value in (("time", r.time), ("partition", r.partition), ("account", r.account)):
        if value:
            lines.append(f"#SBATCH --{key}={value}")
    to = "" if r.launcher == "srun" else "B:"
    lines += [f"#SBATCH --output={log}",
              "#SBATCH --open-mode=append",
              "#SBATCH --requeue",
              f"#SBATCH --signal={to}{SIGNAL_NAME}@{r.signal_lead}"]
    if r.array_values:
        lines.append(f"#SBATCH --array=0-{len(r.array_values) - 1}")
    lines += ["",
              f"# {r.signal_lead} s before the time limit Slurm sends SIG{SIGNAL_NAME} "
              + ("to the job steps (the ranks)." if r.launcher == "srun" else
                 "to this script, which passes it on to the ranks."),
              "# mpitrain then stops every rank at the same step, commits a checkpoint and requeues",
              "# this job; the requeued job runs the same command and resumes from that checkpoint.",
              "set -uo pipefail",
              f"cd {q(r.workdir)}",
              f"export OMP_NUM_THREADS={r.cpus_per_task}",
              "ARGS=(" + " ".join(q(a) for o in r.overrides for a in ("--set", o)) + ")"]
    if r.array_values:
        values = " ".join(q(str(v)) for v in r.array_values)
        dirs = " ".join(q(array_run_dir(r.run_dir, i, v)) for i, v in enumerate(r.array_values))
        lines += [f"VALUES=({values})  # {r.array_key}, one array task each",
                  f"RUN_DIRS=({dirs})",
                  f"ARGS+=(--set \"{r.array_key}=${{VALUES[$SLURM_ARRAY_TASK_ID]}}\" "
                  f"--set \"job.run_dir=\\\"${{RUN_DIRS[$SLURM_ARRAY_TASK_ID]}}\\\"\")"]
    command = f"{q(r.python)} -m mpitrain train {q(r.job_file)} \"${{ARGS[@]}}\""
    lines += ["# a stalled job (the watchdog's exit code 77) leaves this file: srun would report the",
              "# stopped rank's SIGKILL instead, and a wrapper could not tell a stall from a crash.",
              f"export MPITRAIN_STALL_FILE={q(r.run_dir)}/.stalled-$SLURM_JOB_ID"]
    if r.launcher == "srun":
        lines += ["# srun does not pass --cpus-per-task on to the step since Slurm 22.05: give it again.",
                  f"srun --mpi={r.mpi} --kill-on-bad-exit=1 --cpus-per-task={r.cpus_per_task} {command}",
                  "status=$?"]
    else:
        lines += ["# mpiexec does not pass the signal on: the trap leaves a file that rank 0 looks for.",
                  f"export MPITRAIN_STOP_FILE={q(r.run_dir)}/.stop-$SLURM_JOB_ID",
                  f"{q(r.mpirun)} -n {r.world} {command} &",
                  "pid=$!",
                  f"trap 'touch \"$MPITRAIN_STOP_FILE\"' {SIGNAL_NAME}",
                  "wait $pid; status=$?",
                  "while kill -0 $pid 2>/dev/null; do wait $pid; status=$?; done  # a trapped signal ends wait early"]
    lines += ['if [ -e "$MPITRAIN_STALL_FILE" ]; then rm -f "$MPITRAIN_STALL_FILE"; status=77; fi',
              "exit $status"]
    return "\n".join(lines) + "\n"
