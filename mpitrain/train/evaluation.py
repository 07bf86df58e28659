"""Evaluation on any layout: every replica predicts its share of a split, in
pipelined micro-batches, and the results meet on world rank 0.

`predict` is the building block tasks use: ``collect(outputs, batch, indices)``
runs on last stages for each micro-batch and returns a list of items (e.g. one
per sample, tagged with its index); rank 0 receives every item of the split.
`mean_loss` is the generic metric: the split's loss per loss term.
"""
from __future__ import annotations

import numpy as np


def replica_chunks(n: int, dp: int, replica: int, eval_batch: int, microbatches: int) -> list[list[np.ndarray]]:
    """This replica's samples (positions replica, replica + dp, ...) cut into
    evaluation batches of ``eval_batch // dp`` samples, each split into at most
    `microbatches` non-empty micro-batches."""
    mine = np.arange(n)[replica::dp]
    per_replica = max(1, eval_batch // dp)
    chunks = []
    for start in range(0, len(mine), per_replica):
        chunk = mine[start:start + per_replica]
        chunks.append([p for p in np.array_split(chunk, min(microbatches, len(chunk))) if len(p)])
    return chunks


def predict(trainer, split, collect) -> list | None:
    """Forward every sample of `split` (a name or a dataset) through the model.
    Returns on world rank 0 the concatenation of `collect`'s lists (in rank, then
    batch order), None elsewhere. Collective over the world.

    With tensor parallelism `collect` runs on every shard of a last stage's tensor
    group, in step, so it may communicate over the group: outputs split by the
    tensor group (e.g. vocabulary-parallel logits) must be combined there (a
    vocabulary-parallel loss, `mpitrain.tp.ops.gather_last_dim`). Rank 0 keeps
    shard 0's items; the other shards' are the same."""
    from ..comm import faults, waits

    faults.point("evaluation")
    topo, model = trainer.topo, trainer.model
    dataset = trainer.datasets[split] if isinstance(split, str) else split
    items = []
    for parts in replica_chunks(len(dataset), topo.grid.dp, topo.coords.dp, trainer.cfg.train.eval_batch,
                                trainer.microbatches):
        batches = [dataset.batch(p) for p in parts]

        def one(outputs, mb):
            return collect(outputs, batches[mb], parts[mb])

        with waits.where(f"evaluation of {split if isinstance(split, str) else 'a dataset'}"):
            for got in model.predict([b[0] for b in batches], one):
                items.extend(got)
    mine = items if topo.is_last_stage and topo.coords.tp == 0 else None
    gathered = topo.world.gather(mine, root=0)
    if topo.rank != 0:
        return None
    return [item for part in gathered if part for item in part]


def mean_loss(trainer, split) -> float | None:
    """The task loss of `split` per loss term (world rank 0; None elsewhere)."""
    loss = trainer.spec.loss

    def collect(outputs, batch, indices):
        targets = batch[1].to(outputs.device) if hasattr(batch[1], "to") else batch[1]
        return [(float(loss(outputs, targets)), int(loss.count(targets)))]

    parts = predict(trainer, split, collect)
    if parts is None:
        return None
    total = sum(s for s, _ in parts)
    count = sum(c for _, c in parts)
    return total / count if count else float("nan")
