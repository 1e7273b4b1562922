"""The training stages of dual-encoder models as small task objects the one trainer drives.

``pretrain`` (image–text contrastive, the CLIP objective), ``cir`` (S1's Eq. 2 on triplets,
or a baseline with parameters) and ``combiner`` (S1's Eq. 3). A task builds its model, names
the parameters it trains, computes embeddings inside the (DDP-wrapped) step module, turns
them into a loss, and exports the result. The S2 stages of ``mllm-*`` models build on the
same :class:`Task` in :mod:`opencir.train.mllm_tasks`; :func:`opencir.train.stages.make_task`
picks the task for a recipe.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoTokenizer

from opencir.models.backbones import DualEncoderTower, DualTower
from opencir.models.base import CIRModel
from opencir.models.base_weights import load_text_source
from opencir.models.checkpoint import is_checkpoint
from opencir.models.loading import BACKBONE_META, resolve_source
from opencir.models.mllm import MLLMEmbedder
from opencir.models.registry import create_model, init_vision_encoder, load
from opencir.train.config import TrainConfig
from opencir.train.data import (
    NEGATIVE_CAPTION_TOKENS,
    PAIR_IMAGES,
    PAIR_TOKENS,
    REGION_BOXES,
    REGION_CAPTION_IDS,
    REGION_IMAGES,
    REGION_TOKENS,
)
from opencir.train.distributed import DistContext, gather_with_grad
from opencir.train.fixed_targets import ROW_FIELDS
from opencir.train.losses import (
    EXCLUDED_SCORE,
    batch_contrastive_loss,
    clip_loss,
    pool_contrastive_loss,
    region_caption_loss,
    region_embeddings,
)
from opencir.train.provenance import training_records

log = logging.getLogger(__name__)


def build_model(config: TrainConfig) -> CIRModel:
    """Start from an OpenCIR checkpoint (``init``) or a registry name (+ backbone weights)."""
    if config.init:
        if not is_checkpoint(config.init):
            raise FileNotFoundError(f"init={config.init!r} is not an OpenCIR checkpoint directory")
        return _with_settings(load(config.init), config.model_overrides)
    model = create_model(config.model, pretrained=config.pretrained, **config.model_overrides)
    if config.text_init:
        load_text_encoder(model, config.text_init)
    if config.vision_init:
        if not isinstance(model, MLLMEmbedder):
            raise ValueError("vision_init only applies to mllm-* models")
        init_vision_encoder(model, config.vision_init)
    return model


def _with_settings(model: CIRModel, overrides: dict[str, Any]) -> CIRModel:
    """Apply ``model_overrides`` to a loaded checkpoint: only settings that change no tensor."""
    if not overrides:
        return model
    settings = getattr(model, "with_settings", None)
    if settings is None:
        raise ValueError(
            f"model_overrides {sorted(overrides)} cannot change a model loaded from init=; "
            "they shape the architecture, which the checkpoint fixes"
        )
    return settings(**overrides)


def load_text_encoder(model: CIRModel, source: str) -> None:
    """Put pretrained text-encoder weights and tokenizer into every ``dual`` tower of a model."""
    towers = [m for m in model.modules() if isinstance(m, DualEncoderTower)]
    if not towers:
        raise ValueError("text_init only applies to models on a 'dual' backbone")
    location, _ = resolve_source(source)
    weights = load_text_source(source)
    for tower in towers:
        result = tower.hf.text_model.load_state_dict(weights, strict=False)
        if any("pooler" not in key for key in result.missing_keys) or result.unexpected_keys:
            raise ValueError(f"text_init {source!r} does not fit the text tower: {result}")
    model.tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
    backbone = dataclasses.replace(model.config.backbone, text_source=source)
    model.config = dataclasses.replace(model.config, backbone=backbone)
    log.info("text encoder initialised from %s", source)


class Task:
    """Base class: the model, what it trains, and the per-step computation."""

    def __init__(self, config: TrainConfig, model: CIRModel) -> None:
        self.config, self.model = config, model
        # fixed target embeddings of the training images (``fixed_targets``), on the device
        self.candidate_table: torch.Tensor | None = None

    def caches_candidates(self) -> bool:
        """Whether the candidates' embeddings are fixed, so the trainer computes them once."""
        return False

    def trainable_parameters(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def text_tokenizer(self) -> Any:
        """What the data loader tokenizes the batch texts with."""
        return self.model.text_tokenizer()

    def embeddings(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], ctx: DistContext) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimizer step (EMA updates live here)."""

    def export(self, out_dir: Path) -> Path:
        return self.save_final(out_dir)

    def save_final(self, out_dir: Path) -> Path:
        """The finished model as ``out_dir/final``, its card recording recipe and data."""
        return self.model.save(out_dir / "final", training_records(self.config))


class PretrainTask(Task):
    """Image–text contrastive pretraining of the backbone (the CLIP objective)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        tower = self.model.tower
        unused = {id(p) for p in tower.unused_parameters()}
        return [p for p in tower.parameters() if id(p) not in unused]

    def embeddings(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Image and caption embeddings, the mined negative pairs (if any) after the batch's;
        then the hard negative captions' embeddings, if the config asks for them; then, for
        the region loss, the regions' pooled patch embeddings, their distinct captions'
        embeddings and each region's caption row (as a float tensor, like every output)."""
        tower = self.model.tower
        images = batch["image"]
        if "negatives" in batch:  # their captions are already in ``tokens``, after the batch's
            images = torch.cat([images, batch["negatives"]])
        states = tower.image_states(images)
        pooled = nn.functional.normalize(tower.pool_image(states), dim=-1)
        outputs: tuple[torch.Tensor, ...] = (pooled, _text_embeddings(tower, batch["tokens"]))
        if self.config.data.negative_caption_field:
            outputs += (_text_embeddings(tower, batch[NEGATIVE_CAPTION_TOKENS]),)
        if self.config.region_loss_weight:
            patches = tower.patch_embeddings(states)
            regions = region_embeddings(patches, batch[REGION_BOXES], batch[REGION_IMAGES])
            captions = _text_embeddings(tower, batch[REGION_TOKENS])
            outputs += (regions, captions, batch[REGION_CAPTION_IDS].float())
        return outputs

    def loss(self, outputs: tuple[torch.Tensor, ...], ctx: DistContext) -> torch.Tensor:
        scale = self.model.tower.hf.logit_scale
        images, texts, *rest = outputs
        negatives = rest.pop(0) if self.config.data.negative_caption_field else None
        loss = _gathered_clip_loss(images, texts, negatives, scale=scale, ctx=ctx)
        if self.config.region_loss_weight:  # this rank's regions among its own captions
            regions, captions, caption_ids = rest
            region_loss = region_caption_loss(regions, captions, caption_ids.long(), scale)
            loss = loss + self.config.region_loss_weight * region_loss
        return loss

    def encode_captions(self, captions: Sequence[str], device: torch.device) -> torch.Tensor:
        """Pooled text embeddings of ``captions`` (for mining hard negatives)."""
        tokens = self.text_tokenizer()(list(captions))
        tokens = {k: v.to(device) for k, v in tokens.items()}
        return self.model.tower.encode_text(tokens["input_ids"], tokens["attention_mask"]).pooled

    def export(self, out_dir: Path) -> Path:
        """The OpenCIR checkpoint plus a Hugging Face backbone dir usable as ``pretrained=``."""
        final = self.save_final(out_dir)
        save_backbone(self.model, out_dir / "backbone")
        return final


def _pair_embeddings(
    tower: DualTower, images: torch.Tensor, tokens: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and pooled caption embeddings of image–caption pairs."""
    image_embeddings = nn.functional.normalize(tower.encode_image(images), dim=-1)
    return image_embeddings, _text_embeddings(tower, tokens)


def _text_embeddings(tower: DualTower, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """Normalised pooled embeddings of tokenised captions."""
    texts = tower.encode_text(tokens["input_ids"], tokens["attention_mask"]).pooled
    return nn.functional.normalize(texts, dim=-1)


def _gathered_clip_loss(
    images: torch.Tensor,
    texts: torch.Tensor,
    negative_texts: torch.Tensor | None = None,
    *,
    scale: torch.Tensor,
    ctx: DistContext,
) -> torch.Tensor:
    """The CLIP loss of this rank's pairs against every rank's (``scale``: the log logit
    scale), every rank's hard negative captions among the image→text candidates."""
    offset = ctx.row_offset(images.shape[0])
    all_images, all_texts = gather_with_grad(images, ctx), gather_with_grad(texts, ctx)
    if negative_texts is not None:
        negative_texts = gather_with_grad(negative_texts, ctx)
    return clip_loss(images, texts, all_images, all_texts, scale, offset, negative_texts)


def save_backbone(model: CIRModel, directory: Path) -> None:
    """Write the tower as a ``save_pretrained`` directory with tokenizer and preprocessing."""
    model.tower.hf.save_pretrained(directory)
    model.tokenizer.save_pretrained(directory)
    if model.config.backbone.text_source:
        (directory / BACKBONE_META).write_text(
            json.dumps({"text_source": model.config.backbone.text_source}, indent=2)
        )
    pre = model.config.backbone.preprocess
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": pre.size, "width": pre.size},
                "size": {"shortest_edge": pre.size},
                "do_center_crop": pre.resize == "shortest_edge",
                "image_mean": list(pre.mean),
                "image_std": list(pre.std),
                "resample": {"bicubic": 3, "bilinear": 2, "nearest": 0}[pre.resample],
            },
            indent=2,
        )
    )


class CIRTask(Task):
    """Composed-retrieval training (S1 §II-C, or a baseline with parameters)."""

    # the tower whose image–caption loss joins the CIR loss (``pair_loss_weight``), if any
    pair_tower: DualTower | None = None

    def __init__(self, config: TrainConfig, model: CIRModel) -> None:
        super().__init__(config, model)
        if config.pool_negatives and not self.caches_candidates():
            raise ValueError(
                "pool_negatives needs the table of fixed target embeddings: an InstructCIR "
                "model with model_overrides.ema_momentum: 1.0 and cache_fixed_targets: true"
            )
        if config.pair_loss_weight:
            encoder = getattr(model, "query_encoder", None)
            if encoder is None:
                raise ValueError(
                    f"pair_loss_weight needs an InstructCIR model (its query encoder's towers "
                    f"take the image–caption loss), got {model.config.name!r}"
                )
            self.pair_tower = encoder.tower

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = self.model.cir_trainable_parameters()
        if not params:
            raise ValueError(
                f"model {self.model.config.name!r} has no trainable CIR parameters "
                "(image-only/text-only/sum are zero-shot baselines)"
            )
        return params

    def caches_candidates(self) -> bool:
        return self.config.cache_fixed_targets and getattr(self.model, "has_fixed_target", False)

    def embeddings(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Queries, then the candidates: targets, references and mined hard negatives (or the
        pool's scores); with ``pair_loss_weight``, the pairs' image and caption embeddings
        last."""
        queries = self.model.forward_query(batch["reference"], batch["tokens"])
        if self.config.pool_negatives:
            outputs = (
                queries,
                self._candidates(batch, "target"),
                self._pool_scores(queries, batch),
            )
        else:
            outputs = (queries, self._candidates(batch, "target"))
            if self.config.reference_negatives:
                outputs += (self._candidates(batch, "reference"),)
            if "negatives" in batch or ROW_FIELDS["negatives"] in batch:
                outputs += (self._candidates(batch, "negatives"),)
        if self.pair_tower is not None:
            outputs += _pair_embeddings(self.pair_tower, batch[PAIR_IMAGES], batch[PAIR_TOKENS])
        return outputs

    def _candidates(self, batch: dict[str, Any], field: str) -> torch.Tensor:
        """The target-encoder embeddings of a batch field: table rows, or encoded pixels."""
        rows = batch.get(ROW_FIELDS[field])
        if rows is not None:
            if self.candidate_table is None:
                raise RuntimeError(f"the batch carries {ROW_FIELDS[field]} but no table exists")
            return self.candidate_table[rows]
        return self.model.forward_target(batch[field])

    def _pool_scores(self, queries: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Each query's similarity to every pool image, its own answers (and, without
        ``reference_negatives``, its reference) excluded."""
        if self.candidate_table is None:
            raise RuntimeError("pool_negatives: the table of fixed target embeddings is missing")
        excluded = batch["answer_rows"]
        if not self.config.reference_negatives:
            excluded = torch.cat([excluded, batch["reference_rows"][:, None]], dim=1)
        scores = queries @ self.candidate_table.T.to(queries.dtype)
        return scores.scatter(1, excluded, EXCLUDED_SCORE)

    def loss(self, outputs: tuple[torch.Tensor, ...], ctx: DistContext) -> torch.Tensor:
        """Eq. 2 over the gathered targets; references and hard negatives add negatives.
        With ``pool_negatives``, over this rank's targets and the whole pool instead; with
        ``pair_loss_weight``, plus that weight times the pairs' image–text contrastive loss."""
        if self.pair_tower is None:
            return self._cir_loss(outputs, ctx)
        *cir_outputs, images, texts = outputs
        scale = self.pair_tower.hf.logit_scale.detach()
        pairs = _gathered_clip_loss(images, texts, scale=scale, ctx=ctx)
        return self._cir_loss(tuple(cir_outputs), ctx) + self.config.pair_loss_weight * pairs

    def _cir_loss(self, outputs: tuple[torch.Tensor, ...], ctx: DistContext) -> torch.Tensor:
        if self.config.pool_negatives:
            return pool_contrastive_loss(*outputs, temperature=self.config.temperature)
        queries, *candidates = outputs
        all_candidates = torch.cat([gather_with_grad(c, ctx) for c in candidates])
        offset = ctx.row_offset(queries.shape[0])
        return batch_contrastive_loss(queries, all_candidates, self.config.temperature, offset)

    def after_step(self) -> None:
        ema_update = getattr(self.model, "ema_update", None)
        if ema_update is not None:
            ema_update()


class CombinerTask(CIRTask):
    """Eq. 3: fine-tune only λ with the same loss, everything else frozen."""

    def __init__(self, config: TrainConfig, model: CIRModel) -> None:
        enable = getattr(model, "enable_combiner", None)
        if enable is None:
            raise ValueError(
                f"the combiner stage needs an InstructCIR model, got {model.config.name}"
            )
        enable()
        super().__init__(config, model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.model.combiner_parameters()

    def after_step(self) -> None:
        """The backbone is frozen, so the EMA target does not move."""


TASKS: dict[str, type[Task]] = {"pretrain": PretrainTask, "cir": CIRTask, "combiner": CombinerTask}


class StepModule(nn.Module):
    """What DDP wraps: one forward computing the task's embeddings for a batch."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task
        self.model = task.model

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task.embeddings(batch)
