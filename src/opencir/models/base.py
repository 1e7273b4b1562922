"""The one API every OpenCIR model (and any wrapped outside model) offers.

Evaluation, indexing and serving only ever call :meth:`encode_query` and
:meth:`encode_target`; both return L2-normalised ``[B, D]`` float tensors, so a cosine
similarity is a plain dot product.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedTokenizerBase

from opencir.models.backbones import get_family
from opencir.models.card import CardRecords
from opencir.models.checkpoint import save_checkpoint
from opencir.models.config import ModelConfig
from opencir.models.preprocess import preprocess_images

ImagesLike = Sequence[Image.Image] | torch.Tensor


@runtime_checkable
class Retriever(Protocol):
    """What the evaluator, the index and the server need from a model.

    A model from outside OpenCIR becomes evaluable by offering these two methods
    (and optionally ``fingerprint()`` so cached gallery embeddings are keyed correctly).
    """

    def encode_query(self, images: ImagesLike, texts: Sequence[str]) -> torch.Tensor: ...

    def encode_target(self, images: ImagesLike) -> torch.Tensor: ...


def retriever_fingerprint(model: Any) -> str:
    """A stable identity for cache keys: the model's own fingerprint, else its class name."""
    fingerprint = getattr(model, "fingerprint", None)
    if callable(fingerprint):
        return str(fingerprint())
    name = f"{type(model).__module__}.{type(model).__qualname__}"
    return hashlib.sha256(name.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TextTokenizer:
    """Texts → CPU ``input_ids``/``attention_mask`` with a fixed padding policy."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int
    pad_to_max_length: bool

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str (one per query)")
        if len(texts) == 0:
            raise ValueError("tokenize got an empty list of texts")
        encoded = self.tokenizer(
            list(texts),
            padding="max_length" if self.pad_to_max_length else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: encoded[k] for k in ("input_ids", "attention_mask")}


class CIRModel(nn.Module, ABC):
    """Base class of OpenCIR models: preprocessing, tokenisation, the two encoders, saving.

    Subclasses implement :attr:`embed_dim` and the differentiable :meth:`forward_query` /
    :meth:`forward_target` on preprocessed tensors; :meth:`encode_query` /
    :meth:`encode_target` wrap them for inference on PIL images or tensors.
    """

    def __init__(self, config: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    @abstractmethod
    def embed_dim(self) -> int:
        """Size of the embeddings both encoders return."""

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images → normalised pixel tensor as the backbone expects (on CPU)."""
        return self.image_preprocessor()(images)

    def image_preprocessor(self) -> Callable[[Sequence[Image.Image]], torch.Tensor]:
        """A picklable preprocessing function (for data workers)."""
        return functools.partial(preprocess_images, config=self.config.backbone.preprocess)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Texts → ``input_ids`` and ``attention_mask`` on the model's device."""
        tokens = self.text_tokenizer()(texts)
        return {k: v.to(self.device) for k, v in tokens.items()}

    def text_tokenizer(self) -> TextTokenizer:
        """A picklable CPU tokenizer with this model's padding policy (for data workers)."""
        backbone = self.config.backbone
        pad_to_max = get_family(backbone.family).pad_to_max_length
        return TextTokenizer(self.tokenizer, backbone.max_text_length, pad_to_max)

    def pixels(self, images: ImagesLike) -> torch.Tensor:
        """Accept PIL images or an already preprocessed ``[B, 3, H, W]`` tensor."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"image tensor must be [B, 3, H, W], got {tuple(images.shape)}")
            return images.to(self.device, torch.float32)
        return self.preprocess(images).to(self.device)

    def cir_trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the CIR training stage updates (none for parameter-free baselines)."""
        return []

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Trade compute for memory on large backbones (recompute activations in backward)."""
        for module in self.modules():
            if hasattr(module, "gradient_checkpointing_enable") and enabled:
                module.gradient_checkpointing_enable()
            if hasattr(module, "use_checkpointing"):
                module.use_checkpointing = enabled

    @abstractmethod
    def forward_query(self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Composed-query embeddings ``[B, D]`` (L2-normalised) from pixels and tokens."""

    @abstractmethod
    def forward_target(self, pixels: torch.Tensor) -> torch.Tensor:
        """Target-image embeddings ``[B, D]`` (L2-normalised) from pixels."""

    @torch.inference_mode()
    def encode_query(self, images: ImagesLike, texts: Sequence[str]) -> torch.Tensor:
        """Composed-query embeddings ``[B, D]``, L2-normalised."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str (one per query), not a single str")
        pixels = self.pixels(images)
        if len(texts) != pixels.shape[0]:
            raise ValueError(f"got {pixels.shape[0]} images but {len(texts)} texts")
        return self.forward_query(pixels, self.tokenize(texts))

    @torch.inference_mode()
    def encode_target(self, images: ImagesLike) -> torch.Tensor:
        """Gallery (target) image embeddings ``[B, D]``, L2-normalised."""
        return self.forward_target(self.pixels(images))

    def fingerprint(self) -> str:
        """Hash of the config and every weight: equal fingerprints give equal embeddings."""
        digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, directory: str | Path, records: CardRecords | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors``, the tokenizer and a model card.

        ``records`` (training recipe, data provenance, evaluation results, licence) fill
        the model card ``README.md``; without them its unknown sections say so.
        """
        return save_checkpoint(directory, self.config, self.state_dict(), self.tokenizer, records)
