"""Models: registry, backbones, S1 reformulation network, S2 MLLM embedder, baselines."""

from opencir.models.base import CIRModel, Retriever
from opencir.models.card import CardRecords
from opencir.models.checkpoint import CheckpointError, update_model_card
from opencir.models.config import (
    BackboneConfig,
    FusionConfig,
    MLLMConfig,
    ModelConfig,
    PreprocessConfig,
)
from opencir.models.loading import PretrainedNotAvailableError
from opencir.models.mllm import MLLMEmbedder
from opencir.models.registry import (
    create_model,
    get_model_config,
    list_models,
    load,
    load_model,
)

__all__ = [
    "BackboneConfig",
    "CIRModel",
    "CardRecords",
    "CheckpointError",
    "FusionConfig",
    "MLLMConfig",
    "MLLMEmbedder",
    "ModelConfig",
    "PreprocessConfig",
    "PretrainedNotAvailableError",
    "Retriever",
    "create_model",
    "get_model_config",
    "list_models",
    "load",
    "load_model",
    "update_model_card",
]
