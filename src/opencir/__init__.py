"""OpenCIR — composed image retrieval: triplets, training, evaluation, indexing, search."""

from opencir.models import (
    CheckpointError,
    CIRModel,
    ModelConfig,
    PretrainedNotAvailableError,
    create_model,
    list_models,
    load,
    load_model,
)

__version__ = "0.1.0"

__all__ = [
    "CIRModel",
    "CheckpointError",
    "ModelConfig",
    "PretrainedNotAvailableError",
    "__version__",
    "create_model",
    "list_models",
    "load",
    "load_model",
]
