"""Training: one trainer for every stage (pretraining, S1/baseline CIR training, combiner)."""

from opencir.train.config import DataConfig, OptimConfig, TrainConfig, load_recipe
from opencir.train.loop import TrainingDivergedError, train

__all__ = [
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "TrainingDivergedError",
    "load_recipe",
    "train",
]
