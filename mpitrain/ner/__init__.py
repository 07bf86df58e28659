"""Named-entity recognition data: CoNLL reading, WordPiece tokenization, HDF5
preparation, lazy batched reading, a synthetic corpus and seqeval metrics.

Names are imported on first use, so `prepare` does not pay for importing torch."""
from importlib import import_module

_HOME = {
    "Sentence": "conll", "iter_conll": "conll", "read_conll": "conll",
    "IGNORE": "tokenize", "WordPieceTokenizer": "tokenize", "load_tokenizer": "tokenize",
    "collect_labels": "prepare", "check_tags": "prepare", "prepare_split": "prepare",
    "prepare_all": "prepare",
    "NerH5Dataset": "dataset",
    "ner_report": "metrics", "align_predictions": "metrics",
    "write_synthetic_corpus": "synthetic", "write_vocab": "synthetic",
}
__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(import_module(f"mpitrain.ner.{_HOME[name]}"), name)
    raise AttributeError(f"module 'mpitrain.ner' has no attribute {name!r}")
