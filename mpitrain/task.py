"""The task interface: everything model-specific, so that the generic engine
(rank grid, data parallelism, pipeline, Trainer) can train any model.

A task is any object with these methods (subclass `Task` to get the optional
ones for free)::

    sections: dict[str, type]          config sections it owns, e.g. {"model": ModelCfg}
    prepare(cfg) -> picklable          run once, on rank 0 (tokenize, download-free caching, ...);
                                       the result reaches every rank as `prepared`
    datasets(cfg, prepared) -> {split: Dataset}       "train" is required; "dev"/"test" optional
    model(cfg, prepared) -> Model      layers, loss, tied weights; `prepared` is None in
                                       `plan` (a dry run): describe the model from cfg alone
    evaluate(trainer, split) -> dict   metrics of a split on any layout (world rank 0; None elsewhere)
    export(trainer, out_dir) -> str    optional: write the trained model (collective)
    describe(prepared) -> str          optional: what `prepare` made, for `mpitrain prepare`
    after_fit(trainer) -> None         optional: anything to do or show at the end (collective)
    checkpoint_state(prepared) -> dict optional: facts (JSON) a checkpoint must match to be
                                       resumed, e.g. the label list or the tokenizer's checksum

A Dataset has ``__len__`` and ``batch(indices) -> Batch``: the inputs of the first
layer, the targets of the loss, the number of loss terms and (for throughput)
the number of tokens or samples.

Sections are dataclasses whose fields use `mpitrain.config.opt` (a default, a
help text, and optional choices/min/max), so a task's keys get the same
one-line errors as the generic ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .errors import UsageError
from .layers import LayerSpec

REQUIRED_METHODS = ("datasets", "model")
OPTIONAL_METHODS = ("prepare", "evaluate", "export", "describe", "after_fit", "checkpoint_state")


class Batch(NamedTuple):
    inputs: tuple          # the first layer's input tensors
    targets: Any           # what the loss compares the last layer's output with
    count: int             # loss terms in this batch (e.g. non-ignored tokens)
    tokens: int | None = None  # for throughput: tokens (or samples); None = count


@runtime_checkable
class Dataset(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices) -> Batch: ...


@dataclass
class Model:
    """What the engine needs of a model.

    layers: ordered `LayerSpec`s (each built only on the rank that owns it).
    loss: ``count(targets) -> int`` and ``__call__(outputs, targets) -> summed loss``
          (see `mpitrain.train.losses`).
    tied: groups of global parameter names that are one weight (e.g. input and
          output embeddings); they may live on different pipeline stages.
    sample: the first layer's inputs for ``partition = "profile"``; None = the first
          training batch (in `plan`, profile then falls back to parameter counts).
    description: one line for `plan` and the start-up log.
    """
    layers: list[LayerSpec]
    loss: Any
    tied: list = field(default_factory=list)
    sample: tuple | None = None
    description: str = ""


class Task:
    """Base class with the optional parts of the interface; override `datasets`
    and `model` (and usually `prepare` and `evaluate`)."""

    name = "task"
    sections: dict[str, type] = {}

    def prepare(self, cfg):
        return None

    def datasets(self, cfg, prepared) -> dict:
        raise NotImplementedError(f"task {self.name!r}: define datasets(cfg, prepared)")

    def model(self, cfg, prepared) -> Model:
        raise NotImplementedError(f"task {self.name!r}: define model(cfg, prepared)")

    def evaluate(self, trainer, split: str) -> dict | None:
        """Default: the mean loss of the split (world rank 0)."""
        from .train.evaluation import mean_loss

        loss = mean_loss(trainer, split)
        return None if loss is None else {"loss": loss}

    def describe(self, prepared) -> str:
        return f"prepared: {prepared!r}"


class TaskError(UsageError):
    """The task's own code raised an exception that is not a UsageError: one line
    naming the call, the exception and the line of the task's code it came from
    (exit code 2, like every bad input)."""


def run_user_code(what: str, fn, *args):
    """`fn(*args)`; any exception but a UsageError becomes a one-line `TaskError`
    saying that `what` raised it, and where."""
    from .failure import describe_exception

    try:
        return fn(*args)
    except UsageError:
        raise
    except Exception as exc:
        raise TaskError(f"{what} raised {describe_exception(exc)}; fix the task's code") from exc
