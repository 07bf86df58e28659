"""The GPT task's job-file sections: [model] (a small GPT-2-style decoder) and
[data] (the text, its tokenizer and its blocks)."""
from __future__ import annotations

from dataclasses import dataclass

from ...config import opt


@dataclass
class ModelSection:
    vocab_size: int = opt(2048, "byte-level BPE vocabulary to train (ignored with data.tokenizer)", min=257)
    block_size: int = opt(64, "tokens per training sequence (the model's context length)", min=2)
    n_embd: int = opt(128, "hidden size", min=8)
    n_layer: int = opt(2, "transformer blocks", min=1)
    n_head: int = opt(4, "attention heads (must divide n_embd)", min=1)
    dropout: float = opt(0.1, "embedding, attention and residual dropout", min=0.0, max=1.0)


@dataclass
class DataSection:
    source: str = opt("pydoc", "pydoc (Python's own help text, ships with Python) | files (UTF-8 .txt "
                               "files in `dir`)", choices=("pydoc", "files"))
    dir: str = opt("", "files: a directory of .txt files (one document each) or one .txt file")
    tokenizer: str = opt("", "a tokenizer.json to use instead of training one on the train split")
    dev_fraction: float = opt(0.1, "share of documents held out for dev", min=0.0, max=0.5)
    test_fraction: float = opt(0.1, "share of documents held out for test", min=0.0, max=0.5)
    split_seed: int = opt(0, "seed of the document split", min=0)
    prepared_dir: str = opt("", "where the tokenizer and HDF5 blocks go (default runs/prepared/NAME)")
    limit: int = opt(0, "use only the first N blocks of each split (0 = all)", min=0)
    prompt: str = opt("The", "prompt of the greedy continuation printed at the end")
    generate: int = opt(40, "tokens of that continuation (0 = none)", min=0)
