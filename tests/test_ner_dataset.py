"""NerH5Dataset: lazy reads, dynamic padding, padding slots (-1), pickling."""
import pickle

import h5py
import numpy as np
import pytest
import torch

from mpitrain.errors import DataError
from mpitrain.tasks.ner.dataset import NerH5Dataset
from mpitrain.tasks.ner.prepare import prepare_split
from mpitrain.tasks.ner.tokenize import IGNORE

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "##x"]
LABELS = ["O", "B-PER", "I-PER"]


@pytest.fixture
def prepared(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # sentence i has i + 1 words; word "ax" is two pieces
    sents = []
    for i in range(40):
        words = ["a", "b", "c", "ax"][: 1 + i % 4] + ["b"] * (i // 4)
        sents.append("\n".join(f"{w} {'B-PER' if j == 0 else 'O'}" for j, w in enumerate(words)))
    src = tmp_path / "train"
    src.write_text("\n\n".join(sents) + "\n")
    return prepare_split(src, tmp_path / "train.h5", model, LABELS, max_len=64)


def test_length_labels_and_lengths(prepared):
    ds = NerH5Dataset(prepared)
    assert len(ds) == 40 and ds.labels == LABELS and ds.pad_id == 0
    assert ds.lengths[:4].tolist() == [3, 4, 5, 7]


def test_batch_pads_to_its_longest_sentence(prepared):
    ds = NerH5Dataset(prepared)
    ids, mask, labels = ds.batch([0, 3])
    assert ids.dtype == mask.dtype == labels.dtype == torch.long
    assert ids.shape == (2, 7)
    assert ids.tolist() == [[2, 5, 3, 0, 0, 0, 0], [2, 5, 6, 7, 5, 8, 3]]
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0, 0], [1] * 7]
    assert labels.tolist() == [[IGNORE, 1, IGNORE, IGNORE, IGNORE, IGNORE, IGNORE],
                               [IGNORE, 1, 0, 0, 0, IGNORE, IGNORE]]
    assert ds.batch([1, 0])[0].shape == (2, 4)


def test_padding_slots_are_fully_masked(prepared):
    ds = NerH5Dataset(prepared)
    ids, mask, labels = ds.batch([-1, 2, -1])
    assert ids.shape == (3, 5)
    for r in (0, 2):
        assert ids[r].eq(0).all() and mask[r].eq(0).all() and labels[r].eq(IGNORE).all()
    assert ids[1].tolist() == [2, 5, 6, 7, 3]
    ids, mask, labels = ds.batch(np.array([-1, -1]))
    assert ids.shape == (2, 1) and mask.sum() == 0 and labels.eq(IGNORE).all()


def test_shuffled_indices_far_apart_match_contiguous_reads(prepared):
    ds = NerH5Dataset(prepared)
    order = [39, 0, 20, 5, 39]
    ids, mask, labels = ds.batch(order)
    for r, i in enumerate(order):
        one_ids, one_mask, one_labels = ds.batch([i])
        n = one_ids.shape[1]
        assert ids[r, :n].tolist() == one_ids[0].tolist()
        assert labels[r, :n].tolist() == one_labels[0].tolist()
        assert mask[r].sum() == n


def test_first_subtoken_mask_and_source_lines(prepared):
    ds = NerH5Dataset(prepared)
    assert ds.first_subtoken_mask([3, -1]).tolist() == [[False, True, True, True, True, False, False],
                                                       [False] * 7]
    assert ds.source_lines([0, 1, -1]) == [1, 3, -1]


def test_bad_index(prepared):
    ds = NerH5Dataset(prepared)
    with pytest.raises(IndexError):
        ds.batch([40])
    with pytest.raises(IndexError):
        ds.batch([-2])


def test_pickle_reopens(prepared):
    ds = NerH5Dataset(prepared)
    ds.batch([0])
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.batch([3])[0].tolist() == ds.batch([3])[0].tolist()
    clone.close()
    ds.close()


def test_stale_format_is_a_clear_error(prepared):
    with h5py.File(prepared, "r+") as f:
        f.attrs["format_version"] = 0
    with pytest.raises(DataError, match="run `python -m mpitrain prepare` again"):
        NerH5Dataset(prepared)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="cannot open prepared data"):
        NerH5Dataset(tmp_path / "nope.h5")
