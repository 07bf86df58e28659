"""mpitrain: MPI-native data- and pipeline-parallel training for PyTorch.

The public surface (start ranks with ``mpirun -n N python my_train.py``)::

    import mpitrain

    class MyTask(mpitrain.Task):            # or any object with datasets() and model()
        def datasets(self, cfg, prepared): ...   # {"train": ds, "dev": ds}; ds.batch(idx) -> Batch
        def model(self, cfg, prepared):          # layers, loss, tied weights
            return mpitrain.Model([mpitrain.LayerSpec("embed", ...), ...], loss)

    mpitrain.train(MyTask(), grid={"dp": 2, "pp": 2}, train={"lr": 1e-3, "epochs": 3})
    # or: trainer = mpitrain.Trainer(MyTask(), "my_job.toml"); trainer.fit()

`LayerSpec`, `ParallelModel` and the parallel engines can also be used directly.
Names are imported on first use, so `import mpitrain` stays light.
"""
from importlib import import_module

__version__ = "0.1.0"

_HOME = {
    "Task": "task", "Model": "task", "Batch": "task", "Dataset": "task",
    "LayerSpec": "layers", "BuildContext": "layers",
    "ParallelModel": "train.parallel",
    "predict": "train.evaluation", "mean_loss": "train.evaluation",
    "Trainer": "train.trainer",
    "TokenCrossEntropy": "train.losses",
    "JobConfig": "config", "opt": "config",
    "load_job": "jobfile",
    "UsageError": "errors", "ConfigError": "errors", "DataError": "errors",
}
__all__ = sorted(_HOME) + ["train"]


def train(task=None, job_file=None, *, overrides=(), **sections) -> dict | None:
    """Run a whole job on every rank and return its final (test) metrics on rank 0.

    task: a task object or spec ("ner", "gpt", "pkg.module:factory"); None = the job's.
    job_file: a job file, or None for defaults. overrides: "section.key=value" strings.
    sections: keys by section, e.g. grid={"dp": 2}, train={"lr": 1e-3}, job={"name": "x"}."""
    from .train.trainer import Trainer

    trainer = Trainer(task, job_file, overrides=overrides, **sections)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def __getattr__(name):
    if name in _HOME:
        return getattr(import_module(f"mpitrain.{_HOME[name]}"), name)
    raise AttributeError(f"module 'mpitrain' has no attribute {name!r}")
