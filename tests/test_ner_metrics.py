"""seqeval report wrapper and token -> word alignment of predictions."""
import numpy as np
import pytest
import torch

from mpitrain.tasks.ner.metrics import align_predictions, ner_report

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
I = -100


def test_report_counts_entities_not_tokens():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC", "O"]]
    r = ner_report(true, pred)
    # 3 true entities; predicted 2; one correct (the PER), the LOC span is cut short
    assert r["support"] == 3
    assert r["precision"] == pytest.approx(1 / 2)
    assert r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(0.4)
    assert r["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert r["per_type"]["LOC"]["recall"] == 0.0 and r["per_type"]["LOC"]["support"] == 2
    assert "micro avg" in r["report"] and "PER" in r["report"]


def test_report_perfect_and_empty_predictions():
    true = [["B-PER", "O"]]
    assert ner_report(true, true)["f1"] == 1.0
    r = ner_report(true, [["O", "O"]])
    assert (r["precision"], r["recall"], r["f1"]) == (0.0, 0.0, 0.0)


def test_report_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        ner_report([["O", "O"]], [["O"]])


def test_align_from_logits_with_padding_row():
    labels = torch.tensor([[I, 3, I, 4, 0, I],
                           [I, I, I, I, I, I],          # padding slot
                           [I, 1, 2, I, I, I]])
    pred_ids = torch.tensor([[0, 3, 0, 4, 1, 0],
                             [0, 0, 0, 0, 0, 0],
                             [0, 1, 0, 0, 0, 0]])
    logits = torch.nn.functional.one_hot(pred_ids, len(LABELS)).float() * 5
    true, pred = align_predictions(logits, labels, LABELS)
    assert true == [["B-PER", "I-PER", "O"], ["B-LOC", "I-LOC"]]
    assert pred == [["B-PER", "I-PER", "B-LOC"], ["B-LOC", "O"]]
    assert align_predictions(pred_ids.numpy(), labels.numpy(), dict(enumerate(LABELS))) == (true, pred)


def test_align_all_subtokens_uses_first_piece_mask():
    labels = np.array([[I, 3, 4, 4, 0, I]])       # "John" = 3 pieces, all labelled
    first = np.array([[0, 1, 0, 0, 1, 0]], bool)
    pred = np.array([[0, 3, 0, 0, 0, 0]])
    assert align_predictions(pred, labels, LABELS, first) == ([["B-PER", "O"]], [["B-PER", "O"]])
    assert align_predictions(pred, labels, LABELS)[0] == [["B-PER", "I-PER", "I-PER", "O"]]


def test_align_shape_mismatch():
    with pytest.raises(ValueError):
        align_predictions(np.zeros((2, 3)), np.zeros((2, 4)), LABELS)
