"""Synthetic NER corpus: deterministic, WikiANN format, learnable entity spans."""
import hashlib
import re

import pytest

from mpitrain.errors import UsageError
from mpitrain.tasks.ner.conll import read_conll
from mpitrain.tasks.ner.dataset import NerH5Dataset
from mpitrain.tasks.ner.prepare import collect_labels, prepare_all
from mpitrain.tasks.ner.synthetic import write_synthetic_corpus
from mpitrain.tasks.ner.tokenize import load_tokenizer

LINE = re.compile(r"^en:\S+\t(O|[BI]-(PER|ORG|LOC))$")


def digest(paths):
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items()}


def spans(sentence):
    """Entity strings with their type from one sentence."""
    out, cur = [], None
    for tok, tag in zip(sentence.tokens, sentence.tags):
        if tag.startswith("B-"):
            cur = [tag[2:], [tok]]
            out.append(cur)
        elif tag.startswith("I-"):
            assert cur is not None and cur[0] == tag[2:], "I- must continue an entity of its type"
            cur[1].append(tok)
        else:
            cur = None
    return [(t, " ".join(w)) for t, w in out]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_synthetic_corpus(tmp_path_factory.mktemp("syn"), seed=7, n_train=1500, n_dev=300, n_test=300)


def test_deterministic_per_seed(tmp_path):
    make = lambda name, seed: digest(write_synthetic_corpus(tmp_path / name, seed, 200, 50, 50))
    first = make("a", 7)
    assert make("b", 7) == first
    other = make("c", 8)
    assert all(other[k] != first[k] for k in ("train", "dev", "test"))


def test_wikiann_format(corpus):
    text = corpus["train"].read_text(encoding="utf-8")
    assert text.endswith("\n\n")
    for block in text.strip("\n").split("\n\n")[:500]:
        for line in block.split("\n"):
            assert LINE.match(line), line
    sizes = {k: len(read_conll(corpus[k])) for k in ("train", "dev", "test")}
    assert sizes == {"train": 1500, "dev": 300, "test": 300}


def test_entity_spans_of_every_type_with_unseen_names_in_dev(corpus):
    train, dev = read_conll(corpus["train"]), read_conll(corpus["dev"])
    assert collect_labels(train) == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    train_spans = [s for x in train for s in spans(x)]
    dev_spans = [s for x in dev for s in spans(x)]
    for typ in ("PER", "ORG", "LOC"):
        assert sum(t == typ for t, _ in train_spans) > 300
    assert sum(any(t.startswith("I-") for t in x.tags) for x in train) > 500, "multi-word entities"
    seen = {s for _, s in train_spans}
    unseen = sum(s not in seen for _, s in dev_spans) / len(dev_spans)
    assert 0.2 < unseen < 0.8, unseen
    assert len({x.tokens for x in train}) > 0.95 * len(train), "sentences should rarely repeat"


def test_vocab_covers_corpus_and_splits_unseen_names(corpus):
    vocab = corpus["vocab"].read_text(encoding="utf-8").split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(vocab) == len(set(vocab)) and len(vocab) < 2000
    assert all(w == w.lower() for w in vocab[5:])
    assert {"a", "z", "##a", "##z", "0", "##9"} <= set(vocab)
    tok = load_tokenizer(corpus["vocab"].parent)
    dev = read_conll(corpus["dev"])
    enc = tok.encode([x.tokens for x in dev], [[0] * len(x) for x in dev], 128)
    assert tok.unk_id not in set(enc.token_ids.tolist())
    words = set(vocab)
    new = sorted({t for x in dev for t in x.tokens if t.isalpha() and t.lower() not in words})
    assert len(new) > 10, "dev should hold names that train never shows"
    assert all(len(pieces) > 1 for pieces in tok.word_pieces([new])[0])


def test_goes_through_prepare(tmp_path, corpus):
    paths = prepare_all(corpus["train"].parent, tmp_path / "h5", corpus["vocab"].parent, 64)
    ds = NerH5Dataset(paths["dev"])
    assert len(ds) == 300 and ds.labels[0] == "O" and int(ds.lengths.max()) <= 64


def test_sizes_must_be_positive(tmp_path):
    with pytest.raises(UsageError):
        write_synthetic_corpus(tmp_path, n_dev=0)
