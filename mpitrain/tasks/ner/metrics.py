"""Entity-level NER scores with seqeval, and token -> word alignment of predictions.

Scores follow seqeval's default (conlleval-compatible) entity matching: an entity
counts as correct only if its type and both boundaries match. seqeval (which
imports scikit-learn, slow to load) is imported on the first report.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mpitrain.tasks.ner.tokenize import IGNORE


def ner_report(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
               digits: int = 4) -> dict:
    """Micro precision/recall/F1 over entities, per-type rows and seqeval's printable
    ``classification_report``::

        {"precision": p, "recall": r, "f1": f, "support": n_true_entities,
         "per_type": {"PER": {"precision", "recall", "f1", "support"}, ...},
         "report": str}
    """
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    true_tags = [list(t) for t in true_tags]
    pred_tags = [list(p) for p in pred_tags]
    if len(true_tags) != len(pred_tags) or any(len(t) != len(p) for t, p in zip(true_tags, pred_tags)):
        raise ValueError("true and predicted tag sequences differ in number or length")
    rows = classification_report(true_tags, pred_tags, output_dict=True, zero_division=0)
    per_type = {name: {"precision": float(r["precision"]), "recall": float(r["recall"]),
                       "f1": float(r["f1-score"]), "support": int(r["support"])}
                for name, r in rows.items() if not name.endswith(" avg")}
    report = classification_report(true_tags, pred_tags, digits=digits, zero_division=0)
    return {
        "precision": float(precision_score(true_tags, pred_tags, average="micro", zero_division=0)),
        "recall": float(recall_score(true_tags, pred_tags, average="micro", zero_division=0)),
        "f1": float(f1_score(true_tags, pred_tags, average="micro", zero_division=0)),
        "support": sum(r["support"] for r in per_type.values()),
        "per_type": per_type,
        "report": report,
    }


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def align_predictions(predictions, labels, id2label: Sequence[str] | Mapping[int, str],
                      first_subtoken_mask=None) -> tuple[list[list[str]], list[list[str]]]:
    """Word-level ``(true_tags, pred_tags)`` from token-level outputs.

    ``predictions``: logits ``[b, L, C]`` or predicted ids ``[b, L]``; ``labels``:
    ``[b, L]`` with -100 where not labelled (tensors or arrays). A word is scored at
    its labelled position (the first piece when only first pieces are labelled);
    pass ``first_subtoken_mask`` (``[b, L]`` bool, `NerH5Dataset.first_subtoken_mask`)
    when all sub-tokens were labelled. Rows without any labelled position (padding
    slots) are dropped."""
    pred = _numpy(predictions)
    if pred.ndim == 3:
        pred = pred.argmax(-1)
    gold = _numpy(labels)
    if pred.shape != gold.shape:
        raise ValueError(f"predictions {pred.shape} and labels {gold.shape} differ in shape")
    keep = gold != IGNORE
    if first_subtoken_mask is not None:
        keep &= _numpy(first_subtoken_mask).astype(bool)
    if isinstance(id2label, Mapping):
        names = [id2label[i] for i in range(len(id2label))]
    else:
        names = list(id2label)
    true_out, pred_out = [], []
    for row_pred, row_gold, row_keep in zip(pred, gold, keep):
        if not row_keep.any():
            continue
        true_out.append([names[i] for i in row_gold[row_keep]])
        pred_out.append([names[i] for i in row_pred[row_keep]])
    return true_out, pred_out
