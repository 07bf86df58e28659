"""The model part of `plan`: which layers each pipeline stage holds, with parameter
counts (and measured forward+backward times for partition = 'profile')."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch


def _labels_and_tokenizer(cfg, tmp: Path) -> tuple[int, str | None]:
    from .ner.synthetic import write_synthetic_corpus

    d = cfg.data
    if d.source == "synthetic":
        paths = write_synthetic_corpus(tmp, seed=cfg.job.seed, n_train=d.synthetic_train, n_dev=1, n_test=1)
        from .ner.conll import read_conll
        from .ner.prepare import collect_labels

        return len(d.labels) or len(collect_labels(read_conll(paths["train"]))), str(paths["vocab"].parent)
    if d.labels:
        return len(d.labels), None
    train = Path(d.dir) / d.train
    if train.is_file():
        from .ner.conll import read_conll
        from .ner.prepare import collect_labels

        return len(collect_labels(read_conll(train))), None
    return 7, None  # O + B/I for PER, ORG, LOC until the data is there


def has_model(cfg) -> bool:
    """A job describes a model once it names pretrained weights, or a from-scratch
    model whose vocabulary is known (synthetic data or [model] vocab_size)."""
    return bool(cfg.model.pretrained) or cfg.data.source == "synthetic" or cfg.model.vocab_size > 0


def describe_stages(cfg) -> list[str]:
    if not has_model(cfg):
        return []
    from .ner import task
    from .pipeline.partition import partition

    with tempfile.TemporaryDirectory() as tmp:
        num_labels, tokenizer_dir = _labels_and_tokenizer(cfg, Path(tmp))
        config, specs = task.model_specs(cfg, num_labels, tokenizer_dir or ".")
        p = cfg.pipeline
        method = list(p.cuts) if p.partition == "cuts" else p.partition
        sample = None
        if method == "profile":
            batch = max(1, cfg.train.global_batch // cfg.grid.dp)
            seq = max(8, cfg.data.max_len // 2)
            ids = torch.randint(1, config.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(0))
            sample = (ids, torch.ones_like(ids))
        part = partition(specs, cfg.grid.pp, method, sample=sample, seed=cfg.job.seed)
    total = sum(part.layer_params)
    return [f"model: BERT token classifier, {config.num_hidden_layers} encoder layers, hidden "
            f"{config.hidden_size}, {num_labels} labels, {total:,} parameters", part.plan()]
