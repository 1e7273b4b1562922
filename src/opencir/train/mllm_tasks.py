"""The S2 stages for ``mllm-*`` models, driven by the same trainer as every other stage.

``lm``: next-token pretraining of the decoder on captions (the miniature recipe's small LM);
``pretrain`` (S2 stage 1): image ↔ caption contrastive learning of a joint embedding space,
in-batch negatives gathered across ranks; ``cir`` (S2 stage 2): instruction tuning on
triplets, composed query ↔ target. Stages 1 and 2 train LoRA adapters on the language model
(or the whole LM with ``mllm.lora_rank: 0``) and the projector; the vision tower is frozen
unless ``mllm.train_vision``. Export merges the adapters, so every stage's ``final/`` is a
plain checkpoint the next stage starts from (``init=``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from opencir.models.mllm import MLLMEmbedder
from opencir.train.config import TrainConfig
from opencir.train.distributed import DistContext, gather_with_grad
from opencir.train.losses import batch_contrastive_loss
from opencir.train.tasks import CIRTask, Task


class MLLMStage(Task):
    """Shared by the S2 stages: adapters on construction, merged on export."""

    model: MLLMEmbedder
    uses_lora = True

    def __init__(self, config: TrainConfig, model: MLLMEmbedder) -> None:
        super().__init__(config, model)
        settings = config.mllm
        if settings.lora_rank > 0 and self.uses_lora:
            lora = (settings.lora_rank, settings.lora_alpha, settings.lora_dropout)
            model.add_lora(*lora, targets=settings.lora_targets)

    def trainable_parameters(self) -> list[nn.Parameter]:
        settings = self.config.mllm
        return self.model.stage_parameters(settings.train_vision, settings.train_projector)

    def export(self, out_dir: Path) -> Path:
        self.model.merge_lora()
        return self.save_final(out_dir)


class LanguageModelTask(MLLMStage):
    """Causal language modelling on captions; trains the whole decoder, nothing else."""

    uses_lora = False

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.model.language_model.parameters())

    def text_tokenizer(self) -> Any:
        return self.model.caption_tokenizer()

    def embeddings(self, batch: dict[str, Any]) -> tuple[torch.Tensor]:
        return (self.model.token_nll(batch["tokens"]),)

    def loss(self, outputs: tuple[torch.Tensor, ...], ctx: DistContext) -> torch.Tensor:
        return outputs[0].mean()


class JointEmbeddingTask(MLLMStage):
    """S2 stage 1: images (summary prompt) ↔ captions (text prompt), symmetric InfoNCE."""

    def text_tokenizer(self) -> Any:
        return self.model.prompt_tokenizer("text")

    def embeddings(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_target(batch["image"]), self.model.forward_text(batch["tokens"])

    def loss(self, outputs: tuple[torch.Tensor, ...], ctx: DistContext) -> torch.Tensor:
        images, texts = outputs
        offset = ctx.row_offset(images.shape[0])
        all_images, all_texts = gather_with_grad(images, ctx), gather_with_grad(texts, ctx)
        temperature = self.config.temperature
        image_to_text = batch_contrastive_loss(images, all_texts, temperature, offset)
        text_to_image = batch_contrastive_loss(texts, all_images, temperature, offset)
        return (image_to_text + text_to_image) / 2


class InstructionTuningTask(MLLMStage, CIRTask):
    """S2 stage 2: composed queries ↔ targets on triplets (Eq. 2 loss of the CIR stage)."""

    def after_step(self) -> None:
        """No momentum encoder: queries and targets come from the same model."""


MLLM_TASKS: dict[str, type[MLLMStage]] = {
    "lm": LanguageModelTask,
    "pretrain": JointEmbeddingTask,
    "cir": InstructionTuningTask,
}
