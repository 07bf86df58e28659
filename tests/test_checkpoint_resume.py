"""Checkpoints resume exactly: a run killed mid-epoch and started again with the
same command ends bitwise where the uninterrupted run ends (parameters,
optimizer state and metrics; dropout on), and a checkpoint loads under another
layout with no conversion, training on to within 1e-6 of the uninterrupted run."""
import json

import numpy as np
import pytest

from checkpoints import checkpoint_tensors, crash_after, epoch_lines, final_checkpoint, max_difference, train

BITWISE = [
    ("jobs/test_tiny_ner.toml", 2, ["grid.dp=2", 'train.optimizer="adamw"', "train.lr=3e-3", "model.dropout=0.1",
                                    "model.attention_dropout=0.1"]),
    ("jobs/test_tiny_gpt.toml", 2, ["grid.pp=2", 'train.optimizer="adamw"', "train.lr=3e-3", "model.dropout=0.1"]),
    ("jobs/test_tiny_gpt.toml", 2, ["model.n_head=4", "grid.tp=2", 'train.optimizer="adamw"', "train.lr=3e-3",
                                    "model.dropout=0.1"]),
]


@pytest.mark.parametrize("job,n,sets", BITWISE, ids=["ner-dp2", "gpt-pp2", "gpt-tp2"])
def test_resume_mid_epoch_is_bitwise(tmp_path, job, n, sets):
    sets = sets + ["train.epochs=2", "checkpoint.every_steps=3", "train.log_every=2"]
    straight, resumed, prep = tmp_path / "straight", tmp_path / "resumed", tmp_path / "prep"
    train(n, job, straight, prep, sets)
    crash_after(4, n, job, resumed, prep, sets)  # the newest checkpoint is step 3, mid-epoch 1
    again = train(n, job, resumed, prep, sets)
    assert "resumed from" in again.stdout and "step-00000003" in again.stdout, again.stdout[-2000:]
    a, b = checkpoint_tensors(final_checkpoint(straight)), checkpoint_tensors(final_checkpoint(resumed))
    assert a.keys() == b.keys() and any(k.startswith("optim/") for k in a)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, different[:5]
    assert epoch_lines(straight) == epoch_lines(resumed)
    assert json.loads((straight / "eval_test.json").read_text()) == json.loads((resumed / "eval_test.json").read_text())


@pytest.mark.parametrize("before,after", [((1, 2), (2, 1)), ((1, 2), (1, 4)), ((2, 1), (1, 1))],
                         ids=["dp1pp2-to-dp2pp1", "pp2-to-pp4", "dp2-to-dp1"])
def test_resume_on_another_layout_matches_within_1e6(tmp_path, before, after):
    job = "jobs/test_tiny_gpt.toml"
    sets = ["train.epochs=2", "checkpoint.every_steps=4"]
    layout = lambda dp, pp: [f"grid.dp={dp}", f"grid.pp={pp}"]  # noqa: E731
    straight, resumed, prep = tmp_path / "straight", tmp_path / "resumed", tmp_path / "prep"
    train(before[0] * before[1], job, straight, prep, sets + layout(*before))
    crash_after(5, before[0] * before[1], job, resumed, prep, sets + layout(*before))
    again = train(after[0] * after[1], job, resumed, prep, sets + layout(*after))
    assert "resumed from" in again.stdout and "step-00000004" in again.stdout, again.stdout[-2000:]
    a, b = checkpoint_tensors(final_checkpoint(straight)), checkpoint_tensors(final_checkpoint(resumed))
    assert max_difference(a, b) < 1e-6
    assert max_difference(a, b, "optim/") < 1e-6
