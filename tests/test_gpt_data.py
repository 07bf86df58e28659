"""GPT data: corpus reading and splitting, byte-level BPE, HDF5 token blocks, LMBlocks."""
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from mpitrain.errors import DataError, UsageError
from mpitrain.tasks.gpt.corpus import builtin_corpus, read_text_files, split_documents
from mpitrain.tasks.gpt.data import (EOS, IGNORE, LMBlocks, load_tokenizer, prepare_lm,
                                     train_tokenizer)

TEXT = "naïve café — 東京\n\tTabs, emoji 🙂 and  double  spaces.\r\nThe end "


@pytest.fixture(scope="module")
def pydoc_docs():
    return builtin_corpus("pydoc")


@pytest.fixture
def splits(pydoc_docs):
    return {"train": pydoc_docs[:30], "dev": pydoc_docs[30:33] + [TEXT], "test": pydoc_docs[33:36]}


def stream(tok, docs):
    ids = []
    for i, doc in enumerate(docs):
        ids += ([tok.token_to_id(EOS)] if i else []) + tok.encode(doc).ids
    return ids


# --- corpus ---------------------------------------------------------------------------------

def test_pydoc_corpus_nonempty_and_deterministic(pydoc_docs):
    assert len(pydoc_docs) > 50 and sum(map(len, pydoc_docs)) > 100_000
    assert all(isinstance(d, str) and d for d in pydoc_docs)
    assert builtin_corpus("pydoc") == pydoc_docs
    with pytest.raises(UsageError, match="pydoc"):
        builtin_corpus("wikipedia")


def test_read_text_files(tmp_path):
    (tmp_path / "b.txt").write_bytes("second\r\nline".encode())
    (tmp_path / "a.txt").write_bytes("\ufefffirst ünïcode".encode())
    (tmp_path / "skip.md").write_text("not text")
    assert read_text_files(tmp_path) == ["first ünïcode", "second\nline"]
    assert read_text_files([tmp_path / "b.txt", str(tmp_path / "a.txt")]) == ["second\nline", "first ünïcode"]
    with pytest.raises(DataError, match=r"missing\.txt: file not found"):
        read_text_files([tmp_path / "missing.txt"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: directory has no \*\.txt"):
        read_text_files(tmp_path / "empty")


def test_byte_order_marks_and_zero_width_characters_are_removed_anywhere(tmp_path):
    (tmp_path / "joined.txt").write_bytes("\ufeffone\u200b two\r\n\u2060\u200c\n\ufeffthree\u200d".encode())
    assert read_text_files(tmp_path) == ["one two\n\nthree"]


def test_bad_utf8_names_file_and_offset(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("ok line\ncaf".encode() + b"\xe9 au lait\n")
    with pytest.raises(DataError) as e:
        read_text_files(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg and "byte offset 11" in msg and ":2:" in msg
    assert "UTF-8" in msg and "0xe9" in msg


def test_split_documents_deterministic_and_disjoint():
    docs = [f"doc {i}" for i in range(20)]
    a = split_documents(docs, 0.1, 0.2, seed=3)
    assert a == split_documents(docs, 0.1, 0.2, seed=3)
    assert a != split_documents(docs, 0.1, 0.2, seed=4)
    assert [len(a[s]) for s in ("train", "dev", "test")] == [14, 2, 4]
    assert sorted(sum(a.values(), [])) == sorted(docs)
    assert all(v == sorted(v, key=docs.index) for v in a.values())   # corpus order kept
    assert set(split_documents(docs, 0.1, 0, seed=0)) == {"train", "dev"}
    assert [len(v) for v in split_documents(docs[:3], 0.01, 0.01, 0).values()] == [1, 1, 1]
    with pytest.raises(UsageError, match="too few"):
        split_documents(docs[:2], 0.1, 0.1, 0)
    with pytest.raises(UsageError, match="less than 1"):
        split_documents(docs, 0.5, 0.5, 0)


# --- tokenizer ------------------------------------------------------------------------------

def test_tokenizer_deterministic_and_round_trips(tmp_path, pydoc_docs):
    a = train_tokenizer(pydoc_docs[:40], 600, tmp_path / "a" / "tokenizer.json")
    b = train_tokenizer(pydoc_docs[:40], 600, tmp_path / "b.json")
    assert a.read_bytes() == b.read_bytes()
    tok = load_tokenizer(a)
    assert tok.token_to_id(EOS) == 0 and tok.get_vocab_size() == 600
    ids = tok.encode(TEXT).ids
    assert 0 not in ids and tok.decode(ids) == TEXT
    assert tok.decode(tok.encode("x" + "東京" * 3).ids) == "x" + "東京" * 3
    c = train_tokenizer(pydoc_docs[:40], 700, tmp_path / "c.json")
    assert c.read_bytes() != a.read_bytes()
    with pytest.raises(UsageError, match="at least 257"):
        train_tokenizer(pydoc_docs, 100, tmp_path / "d.json")


def test_load_tokenizer_errors(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot load tokenizer") as e:
        load_tokenizer(bad)
    assert "\n" not in str(e.value)


# --- prepare_lm and LMBlocks ----------------------------------------------------------------

def test_blocks_are_the_token_stream(tmp_path, splits):
    B = 16
    info = prepare_lm(splits, tmp_path, block_size=B, vocab_size=512)
    assert set(info["paths"]) == {"train", "dev", "test"} and info["eos_id"] == 0
    assert info["tokenizer"] == str(tmp_path / "tokenizer.json") and info["vocab_size"] == 512
    tok = load_tokenizer(info["tokenizer"])
    for split, docs in splits.items():
        ids = stream(tok, docs)
        assert info["tokens"][split] == len(ids)
        with h5py.File(info["paths"][split], "r") as f:
            blocks = f["blocks"][...]
            assert blocks.dtype == np.uint16 and f.attrs["block_size"] == B
        n = (len(ids) - 1) // B
        assert blocks.shape == (n, B + 1)
        with LMBlocks(info["paths"][split]) as ds:
            assert len(ds) == n and ds.block_size == B and ds.vocab_size == 512
            (x,), y, count = ds.batch(np.arange(n))
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (n, B) and count == n * B
        assert torch.equal(x[:, 1:], y[:, :-1])                      # targets = inputs shifted by one
        assert torch.equal(y[:-1, -1], x[1:, 0]) if n > 1 else True  # blocks overlap by one token
        assert x.reshape(-1).tolist() + [int(y[-1, -1])] == ids[:n * B + 1]
    dev_text = tok.decode(stream(tok, splits["dev"]), skip_special_tokens=False)
    assert dev_text == EOS.join(splits["dev"])                      # non-ASCII document survives


def test_tokenizer_trained_on_train_only(tmp_path, splits):
    info = prepare_lm(splits, tmp_path / "out", block_size=8, vocab_size=400)
    alone = train_tokenizer(splits["train"], 400, tmp_path / "alone.json")
    assert alone.read_bytes() == open(info["tokenizer"], "rb").read()


def test_reuse_and_rebuild(tmp_path, splits):
    info = prepare_lm(splits, tmp_path, block_size=16, vocab_size=400)
    files = [tmp_path / "tokenizer.json"] + [tmp_path / f"{s}.h5" for s in splits]
    past = 1_000_000_000
    for f in files:
        os.utime(f, (past, past))
    assert prepare_lm(splits, tmp_path, block_size=16, vocab_size=400) == info
    assert [f.stat().st_mtime for f in files] == [past] * len(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in files)   # no temp files

    info2 = prepare_lm(splits, tmp_path, block_size=12, vocab_size=400)      # block_size changed
    assert all(f.stat().st_mtime != past for f in files[1:])
    assert LMBlocks(info2["paths"]["train"]).block_size == 12

    for f in files:
        os.utime(f, (past, past))
    changed = dict(splits, test=splits["test"][:-1] + [splits["test"][-1] + " more"])  # one document
    prepare_lm(changed, tmp_path, block_size=12, vocab_size=400)
    assert all(f.stat().st_mtime != past for f in files[1:])

    for f in files:
        os.utime(f, (past, past))
    prepare_lm(changed, tmp_path, block_size=12, vocab_size=300)             # vocab_size changed
    assert all(f.stat().st_mtime != past for f in files)
    assert LMBlocks(tmp_path / "train.h5").vocab_size == 300


def test_given_tokenizer_file(tmp_path, splits):
    tok_file = train_tokenizer(splits["train"][:5], 300, tmp_path / "mine.json")
    info = prepare_lm({"dev": splits["dev"]}, tmp_path / "out", block_size=8, vocab_size=300,
                      tokenizer_file=tok_file)
    assert set(info["paths"]) == {"dev"} and open(info["tokenizer"], "rb").read() == tok_file.read_bytes()
    with pytest.raises(UsageError, match="raise vocab_size to at least 300"):
        prepare_lm({"dev": splits["dev"]}, tmp_path / "out", block_size=8, vocab_size=299,
                   tokenizer_file=tok_file)
    with pytest.raises(UsageError, match="train split"):
        prepare_lm({"dev": splits["dev"]}, tmp_path / "out2", block_size=8, vocab_size=300)


def test_too_small_split(tmp_path, splits):
    with pytest.raises(DataError) as e:
        prepare_lm(dict(splits, test=["tiny"]), tmp_path, block_size=64, vocab_size=300)
    msg = str(e.value)
    assert "\n" not in msg and "'test'" in msg and "lower block_size or add text" in msg
    assert "too few for one block of block_size + 1 = 65" in msg
    assert not (tmp_path / "test.h5").exists()
    with pytest.raises(UsageError, match="'valid'"):
        prepare_lm({"train": splits["train"], "valid": ["x"]}, tmp_path, block_size=8, vocab_size=300)


def test_batch_keeps_requested_order_and_padding(tmp_path, splits):
    info = prepare_lm(splits, tmp_path, block_size=8, vocab_size=300)
    ds = LMBlocks(info["paths"]["train"])
    n = len(ds)
    (full,), full_y, _ = ds.batch(np.arange(n))
    order = np.array([n - 1, 3, 0, 3, n // 2, 1])   # unsorted, with a repeat
    (x,), y, count = ds.batch(order)
    assert torch.equal(x, full[order]) and torch.equal(y, full_y[order]) and count == 6 * 8
    spread = np.array([n - 1, 0])                   # far apart: fancy-indexing path
    assert torch.equal(ds.batch(spread)[0][0], full[spread])
    (x,), y, count = ds.batch([-1, 2, -1])
    assert count == 8 and torch.equal(x[1], full[2]) and y[0].eq(IGNORE).all() and y[2].eq(IGNORE).all()
    with pytest.raises(IndexError, match="out of range"):
        ds.batch([n])


def test_pickled_dataset_reads(tmp_path, splits):
    info = prepare_lm(splits, tmp_path, block_size=8, vocab_size=300)
    ds = LMBlocks(info["paths"]["dev"])
    assert ds._file is None                          # opened lazily
    before = ds.batch([1, 0])
    assert ds._file is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._file is None and len(clone) == len(ds)
    after = clone.batch([1, 0])
    assert torch.equal(before[0][0], after[0][0]) and torch.equal(before[1], after[1])
    clone.close()
    ds.close()


def test_wrong_format_version(tmp_path, splits):
    info = prepare_lm(splits, tmp_path, block_size=8, vocab_size=300)
    with h5py.File(info["paths"]["test"], "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(DataError) as e:
        LMBlocks(info["paths"]["test"])
    assert "\n" not in str(e.value) and "format 99" in str(e.value) and "delete the file" in str(e.value)
    prepare_lm(splits, tmp_path, block_size=8, vocab_size=300)   # not current any more: rebuilt
    assert len(LMBlocks(info["paths"]["test"])) > 0
