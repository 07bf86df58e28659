"""Saving a checkpoint (see `manifest.py` for the layout on disk).

1. Snapshot (every rank, blocking, short): copies of this rank's share of its
   stage's tensors -- parameters and optimizer state under global names; each
   tensor is written by one data-parallel replica, the replicas sharing the
   bytes; a tensor split over the tensor group as one piece per shard, a
   replicated one once (`pieces.py`) -- its RNG state and epoch accumulators,
   into reused host buffers.
   Training may go on at once: the copies do not change.
2. Write (every rank, in a background thread when `checkpoint.background`): its
   own HDF5 file in the temporary directory, fsync'd.
3. Commit (collective, at a step boundary once every rank's write is done): all
   ranks agree that every part succeeded; rank 0 writes the manifest, fsyncs,
   renames the directory into place, moves `latest`, and only then prunes old
   checkpoints. A failure anywhere stops training with one error, and the
   previous checkpoint stays as it was.
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

from ..comm import faults
from ..failure import exit_everywhere
from . import rng
from .files import CheckpointError, fsync_path, to_array, write_rank_file
from .manifest import (MANIFEST, checkpoint_name, committed, format_version, latest, read_manifest,
                       set_latest, write_json_durably)
from .pieces import mark_pieces, merge_entries, tensor_splits, writer_of


def snapshot(trainer, buffers: dict) -> dict:
    """This rank's part of a checkpoint, as host copies (see the module doc). The
    ranks of a stage share its writing: each shard of a tensor split over the
    tensor group by one of its replicas, a replicated tensor by one rank.
    `buffers` ({key: array}) are reused from save to save."""
    from ..train.state import optimizer_state

    topo, model = trainer.topo, trainer.model
    tensors = {f"model/{n}": t for n, t in model.stage.global_state_dict().items()}
    params = dict(model.named_parameters())
    opt = optimizer_state(trainer.optimizer, params.items(), copy=False)
    for name, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim/{name}/{key}"] = value
    splits = tensor_splits(tensors, model.splits(), params)
    owner = writer_of({k: t.numel() * t.element_size() for k, t in tensors.items()}, topo.grid.dp,
                      topo.grid.tp, set(splits))
    me = (topo.coords.dp, topo.coords.tp)
    mine = {}
    for key, t in tensors.items():
        if owner[(key, topo.coords.tp if key in splits else 0)] == me:
            mine[key] = to_array(t, buffers.get(key))
            buffers[key] = mine[key][0]
    totals = trainer.epoch_totals
    return {"rank": topo.rank, "tensors": mine, "rng": rng.capture(),
            "splits": {k: s for k, s in splits.items() if k in mine},
            "groups": opt["param_groups"] if me == (0, 0) else [],
            "attrs": {"rank": topo.rank, "format_version": format_version(topo.grid.tp),
                      "loss_sum": totals.loss, "loss_count": totals.count, "tokens": totals.tokens}}


def run_state(trainer, metrics: dict | None) -> dict:
    """The run's position and settings, from rank 0 (JSON)."""
    cfg, g = trainer.cfg, trainer.topo.grid
    state = {"step": trainer.step, "epoch": trainer.epoch, "step_in_epoch": trainer.step_in_epoch,
             "scheduler": trainer.scheduler.state_dict(), "config": cfg.to_dict(), "metrics": metrics or {},
             "layout": {"dp": g.dp, "pp": g.pp, "tp": g.tp, "world": trainer.topo.size},
             "task_state": trainer.task_state()}
    scaler = getattr(trainer.model, "scaler", None)
    if scaler is not None:  # fp16: the loss scale (the same on every rank)
        state["loss_scale"] = scaler.state_dict()
    return state


def merge_groups(parts: list[list[dict]]) -> list[dict]:
    """Every writing rank's parameter groups -> groups over global names (ranks with
    the same hyper-parameters in a group pool their names)."""
    merged: list[dict] = []
    for groups in parts:
        for group in groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for m in merged:
                if {k: v for k, v in m.items() if k != "params"} == hyper:
                    m["params"] = m["params"] + group["params"]
                    break
            else:
                merged.append({**hyper, "params": list(group["params"])})
    return merged


class CheckpointSaver:
    def __init__(self, trainer, root: Path, *, keep: int, background: bool, best_metric: str = "",
                 best_mode: str = "max"):
        self.trainer, self.root, self.keep, self.background = trainer, Path(root), keep, background
        self.best_metric, self.best_mode = best_metric, best_mode
        self.world = trainer.topo.world
        self.pending = None   # {name, tmp, thread, result, state, groups} of a save not yet committed
        self.blocked_s = []   # per save: seconds training was held (snapshot + synchronous part)
        self.buffers = {}     # host copies, reused from save to save
        error = None
        if self.world.Get_rank() == 0:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                for stale in self.root.glob(".tmp-*"):  # saves cut short by a crash: never loaded
                    shutil.rmtree(stale, ignore_errors=True)
            except OSError as e:
                error = (f"[checkpoint] dir: cannot create {self.root} ({e.strerror}); choose a writable "
                         "directory")
        error = self.world.bcast(error, root=0)
        if error:
            exit_everywhere(error, self.world)

    # -- the three phases ---------------------------------------------------------------------
    def save(self, metrics: dict | None = None) -> None:
        """Start a checkpoint of the trainer's current state (collective)."""
        self.finish()
        start = time.perf_counter()
        trainer = self.trainer
        name = checkpoint_name(trainer.step)
        tmp = self.root / f".tmp-{name}"
        error = None
        if self.world.Get_rank() == 0:
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            except OSError as e:
                error = f"cannot create {tmp} ({e.strerror}); free space or fix the permissions"
        error = self.world.bcast(error, root=0)
        if error:
            exit_everywhere(f"checkpoint {name}: {error}", self.world)
        part = snapshot(trainer, self.buffers)
        state = run_state(trainer, metrics) if self.world.Get_rank() == 0 else None
        self.pending = {"name": name, "tmp": tmp, "part": part, "state": state, "result": None}
        if self.background:
            thread = threading.Thread(target=self._write, name=f"checkpoint {name}", daemon=True)
            self.pending["thread"] = thread
            thread.start()
            self.blocked_s.append(time.perf_counter() - start)
        else:
            self._write()
            self._commit()
            self.blocked_s.append(time.perf_counter() - start)

    def _write(self) -> None:
        p = self.pending
        part = p["part"]
        faults.point("checkpoint write")
        try:
            path = p["tmp"] / f"rank-{part['rank']:05d}.h5"
            entries = write_rank_file(path, part["tensors"], part["rng"], part["attrs"])
            p["result"] = (mark_pieces(entries, part["splits"]), None)
        except Exception as e:  # noqa: BLE001 - reported by the commit, on every rank
            p["result"] = (None, f"rank {part['rank']}: {type(e).__name__}: {e}")
        part["tensors"] = None

    def poll(self) -> None:
        """At a step boundary (collective): commit a background save once all ranks wrote."""
        if self.pending is None:
            return
        done = not self.pending["thread"].is_alive()
        from mpi4py import MPI

        if self.world.allreduce(done, op=MPI.LAND):
            self._commit()

    def finish(self) -> None:
        """Wait for a background save and commit it (collective)."""
        if self.pending is None:
            return
        if "thread" in self.pending:
            self.pending["thread"].join()
        self._commit()

    def _commit(self) -> None:
        p, self.pending = self.pending, None
        entries, error = p["result"]
        parts = self.world.gather((entries, error, p["part"]["groups"]), root=0)
        outcome = None
        if self.world.Get_rank() == 0:
            errors = [e for _, e, _ in parts if e]
            try:
                if errors:
                    raise OSError(errors[0])
                self._publish(p, parts)
            except OSError as e:
                shutil.rmtree(p["tmp"], ignore_errors=True)
                previous = latest(self.root)
                outcome = (f"checkpoint {p['name']} failed ({e}); training stopped; the previous checkpoint "
                           f"{previous.name if previous else '(none)'} is intact; free space or fix "
                           f"{self.root} and resume")
        outcome = self.world.bcast(outcome, root=0)
        if outcome:
            exit_everywhere(outcome, self.world)

    def _publish(self, p: dict, parts: list) -> None:
        """Rank 0: manifest, rename into place, move `latest`, prune."""
        tensors = merge_entries([entries for entries, _, _ in parts])
        files = sorted(f.name for f in p["tmp"].glob("rank-*.h5"))
        layout = p["state"].pop("layout")
        manifest = {"format_version": format_version(layout["tp"]), "task": self.trainer.cfg.job.task,
                    "layout": layout, "files": files, "tensors": tensors,
                    "param_groups": merge_groups([g for _, _, g in parts]), "state": p["state"]}
        write_json_durably(p["tmp"] / MANIFEST, manifest)
        final = self.root / p["name"]
        if final.exists():  # the same step saved before (e.g. an end-of-epoch save after a step save)
            shutil.rmtree(final)
        p["tmp"].rename(final)
        fsync_path(self.root)
        set_latest(self.root, p["name"])
        self._prune()

    def _prune(self) -> None:
        keep = committed(self.root)[:self.keep]
        if self.best_metric:
            best = self._best()
            if best is not None:
                keep.append(best)
        newest = latest(self.root)
        for path in committed(self.root):
            if path not in keep and path != newest:
                shutil.rmtree(path, ignore_errors=True)

    def _best(self) -> Path | None:
        scored = []
        for path in committed(self.root):
            try:
                value = read_manifest(path)["state"]["metrics"].get(self.best_metric)
            except CheckpointError:
                continue
            if isinstance(value, (int, float)):
                scored.append((value if self.best_mode == "max" else -value, path))
        return max(scored)[1] if scored else None
