"""Train the spirals task from a script through the Python API:

    mpirun -n 4 python examples/spirals/train.py [--set SECTION.KEY=VALUE ...]
"""
import sys

import mpitrain
from spirals import SpiralsTask

overrides = [a for a in sys.argv[1:] if a != "--set"]
metrics = mpitrain.train(SpiralsTask(), grid={"dp": 2, "pp": 2}, job={"name": "spirals-api", "seed": 1},
                         train={"epochs": 20, "global_batch": 64, "lr": 1e-2, "weight_decay": 0.0,
                                "schedule": "cosine", "warmup": 0.05, "log_every": 50},
                         overrides=overrides)
if metrics is not None:  # world rank 0
    print(f"test accuracy {metrics['accuracy']:.3f}")
