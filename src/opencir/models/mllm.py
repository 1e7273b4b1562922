"""S2: a multimodal LLM (LLaVA-style) used as an instruction-aware embedding model.

The query is the reference image plus an instruction that carries the modification text; a
target is an image plus an instruction to summarise it; a caption (stage-1 training) is the
text plus an instruction to summarise it. Each prompt ends where the model would start to
answer, and the embedding is the L2-normalised hidden state there (``pooling="last"``) or
the mean over the prompt (``"mean"``). The language model can carry LoRA adapters (peft)
while training; :meth:`MLLMEmbedder.merge_lora` folds them in before a checkpoint is saved,
so checkpoints always hold plain weights.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

from opencir.models.base import CIRModel, ImagesLike
from opencir.models.config import (
    IMAGE_SLOT,
    PROMPT_SLOT,
    TEXT_SLOT,
    BackboneConfig,
    MLLMConfig,
    ModelConfig,
    PreprocessConfig,
)
from opencir.models.loading import (
    from_pretrained,
    own_memory,
    read_preprocessor,
    resolve_source,
    resolved_backbone,
)

log = logging.getLogger(__name__)

PROMPT_KINDS = ("query", "target", "text")
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class PromptTokenizer:
    """Texts → padded prompt token ids with the image placeholder expanded.

    The user text is cut to ``max_text_length`` tokens *before* it is put into the
    template, so the instruction's ending (where the embedding is read) is never cut off.
    The single ``<image>`` token becomes ``n_image_tokens`` copies, one per visual feature,
    which is where LLaVA scatters the projected image features. Picklable for data workers.
    """

    tokenizer: PreTrainedTokenizerBase
    template: str
    image_token: str
    image_token_id: int
    n_image_tokens: int
    max_text_length: int
    padding_side: str = "left"
    add_bos: bool = True
    add_eos: bool = False

    def __call__(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str (one per query)")
        if len(texts) == 0:
            raise ValueError("tokenize got an empty list of texts")
        return pad_rows([self.encode(t) for t in texts], self.pad_id, self.padding_side)

    @property
    def pad_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def fit_text(self, text: str) -> str:
        """The text as it goes into the prompt: placeholder-free, within the token window."""
        text = text.replace(self.image_token, " ")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_text_length:
            return text
        return self.tokenizer.decode(ids[: self.max_text_length], skip_special_tokens=True)

    def encode(self, text: str) -> list[int]:
        prompt = self.template.replace(TEXT_SLOT, self.fit_text(text))
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        expected = self.template.count(IMAGE_SLOT)
        if ids.count(self.image_token_id) != expected:
            raise ValueError(
                f"prompt {self.template!r} should tokenize to {expected} {self.image_token!r} "
                f"token(s) (id {self.image_token_id}); the tokenizer does not treat it as one "
                "special token"
            )
        expanded: list[int] = []
        for token in ids:
            repeat = self.n_image_tokens if token == self.image_token_id else 1
            expanded.extend([token] * repeat)
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        if self.add_bos and bos is not None:
            expanded.insert(0, int(bos))
        if self.add_eos and eos is not None:
            expanded.append(int(eos))
        return expanded


def pad_rows(rows: list[list[int]], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    """Pad variable-length id lists to one ``[B, T]`` batch on the given side."""
    length = max(len(row) for row in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(length - len(row), length) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding safe)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[B, T, H]`` → ``[B, H]``: the last real token (either padding side) or the mean."""
    if pooling == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.long() * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def n_image_tokens(llava_config: Any) -> int:
    """How many visual features LLaVA scatters into the prompt per image."""
    vision = llava_config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches + (1 if llava_config.vision_feature_select_strategy == "full" else 0)


class MLLMEmbedder(CIRModel):
    """A LLaVA-style model as a composed-retrieval embedder (seed S2)."""

    def __init__(self, config: ModelConfig, tower: nn.Module, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        if config.mllm is None:
            raise ValueError(f"model config {config.name!r} has no mllm section")
        self.mllm = tower
        self.image_token = IMAGE_SLOT
        self.image_token_id = int(tower.config.image_token_id)
        found = tokenizer.convert_tokens_to_ids(IMAGE_SLOT)
        if found != self.image_token_id:
            raise ValueError(
                f"the tokenizer maps {IMAGE_SLOT!r} to id {found}, but the model expects image "
                f"token id {self.image_token_id}: tokenizer and weights do not belong together"
            )
        self._target_tokens: dict[str, torch.Tensor] | None = None

    @property
    def settings(self) -> MLLMConfig:
        assert self.config.mllm is not None
        return self.config.mllm

    @property
    def embed_dim(self) -> int:
        return int(self.mllm.config.text_config.hidden_size)

    @property
    def language_model(self) -> nn.Module:
        return self.mllm.language_model

    def with_settings(self, **changes: Any) -> MLLMEmbedder:
        """Change prompt/pooling settings in place (no tensor depends on them); returns self."""
        allowed = {f.name for f in dataclasses.fields(MLLMConfig)}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ValueError(
                f"{unknown} are not prompt/pooling settings of an mllm model; "
                f"expected some of {sorted(allowed)}"
            )
        self.config = dataclasses.replace(
            self.config, mllm=dataclasses.replace(self.settings, **changes)
        )
        self._target_tokens = None
        return self

    # --- prompts -----------------------------------------------------------------------

    def prompt_tokenizer(self, kind: str = "query") -> PromptTokenizer:
        """The tokenizer of one prompt kind: ``query``, ``target`` or ``text``."""
        if kind not in PROMPT_KINDS:
            raise ValueError(f"prompt kind must be one of {PROMPT_KINDS}, got {kind!r}")
        prompt = getattr(self.settings, f"{kind}_prompt")
        return self._tokenizer(self.settings.chat_template.replace(PROMPT_SLOT, prompt))

    def caption_tokenizer(self) -> PromptTokenizer:
        """Plain ``BOS caption EOS`` rows, right-padded: language-model pretraining."""
        return dataclasses.replace(
            self._tokenizer(TEXT_SLOT), padding_side="right", add_bos=True, add_eos=True
        )

    def _tokenizer(self, template: str) -> PromptTokenizer:
        return PromptTokenizer(
            tokenizer=self.tokenizer,
            template=template,
            image_token=self.image_token,
            image_token_id=self.image_token_id,
            n_image_tokens=n_image_tokens(self.mllm.config),
            max_text_length=self.config.backbone.max_text_length,
            padding_side=self.settings.padding_side,
            add_bos=self.settings.add_bos,
        )

    def text_tokenizer(self) -> PromptTokenizer:  # type: ignore[override]
        """What ``encode_query`` and the CIR training stage tokenize texts with."""
        return self.prompt_tokenizer("query")

    def pixels(self, images: ImagesLike) -> torch.Tensor:
        dtype = next(self.mllm.vision_tower.parameters()).dtype
        return super().pixels(images).to(dtype)

    # --- embeddings --------------------------------------------------------------------

    def embed(self, tokens: dict[str, torch.Tensor], pixels: torch.Tensor | None) -> torch.Tensor:
        """Normalised pooled hidden state of prompts (with images when ``pixels`` is given)."""
        mask = tokens["attention_mask"]
        output = self.mllm(
            input_ids=tokens["input_ids"],
            pixel_values=pixels,
            attention_mask=mask,
            position_ids=positions_from_mask(mask),
            use_cache=False,
        )
        pooled = pool_hidden(output.last_hidden_state, mask, self.settings.pooling)
        return F.normalize(pooled.float(), dim=-1)

    def forward_query(self, pixels: torch.Tensor, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embed(tokens, pixels)

    def forward_target(self, pixels: torch.Tensor) -> torch.Tensor:
        if self._target_tokens is None:
            self._target_tokens = self.prompt_tokenizer("target")([""])
        tokens = {
            k: v.to(pixels.device).expand(pixels.shape[0], -1)
            for k, v in self._target_tokens.items()
        }
        return self.embed(tokens, pixels)

    def forward_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Caption embeddings (text prompt, no image): the text side of stage 1."""
        return self.embed(tokens, None)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.prompt_tokenizer("text")(texts)
        return self.forward_text({k: v.to(self.device) for k, v in tokens.items()})

    def token_nll(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token negative log-likelihood of every real token (tied input/output embedding).

        The decoder has no separate LM head here; predicting with the input embedding matrix
        is what lets the miniature recipe pretrain a small LM on captions.
        """
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        hidden = self.language_model(
            input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)
        ).last_hidden_state
        weight = self.language_model.get_input_embeddings().weight
        logits = hidden[:, :-1] @ weight.T
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        losses = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        return losses[targets != -100]

    # --- training support --------------------------------------------------------------

    @property
    def has_lora(self) -> bool:
        return any("lora_" in name for name, _ in self.language_model.named_parameters())

    def add_lora(
        self,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        targets: Sequence[str] = DEFAULT_LORA_TARGETS,
    ) -> list[nn.Parameter]:
        """Wrap the language model with peft LoRA adapters; returns the adapter parameters."""
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        if self.has_lora:
            raise ValueError("the language model already carries LoRA adapters")
        present = {name.rsplit(".", 1)[-1] for name, _ in self.language_model.named_modules()}
        wanted = [t for t in targets if t in present]
        if not wanted:
            raise ValueError(
                f"none of the LoRA target modules {list(targets)} exist in the language model"
            )
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=wanted)
        self.mllm.language_model = LoraModel(self.language_model, config, "default")
        return self.lora_parameters()

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.language_model.named_parameters() if "lora_" in name]

    def merge_lora(self) -> None:
        """Fold the adapters into the base weights and drop them (before saving)."""
        if self.has_lora:
            self.mllm.language_model = self.language_model.merge_and_unload()

    def stage_parameters(self, train_vision: bool, train_projector: bool) -> list[nn.Parameter]:
        """LoRA adapters (or the whole LM without them), the projector, optionally the ViT."""
        params = self.lora_parameters() if self.has_lora else list(self.language_model.parameters())
        if train_projector:
            params += list(self.mllm.multi_modal_projector.parameters())
        if train_vision:
            params += list(self.mllm.vision_tower.parameters())
        return params

    def cir_trainable_parameters(self) -> list[nn.Parameter]:
        return self.stage_parameters(train_vision=False, train_projector=True)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.mllm.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        else:
            self.mllm.activation_checkpointing_disable()


# --- building and loading ---------------------------------------------------------------


def build_llava(backbone: BackboneConfig) -> nn.Module:
    """Random-weight LLaVA (vision tower + projector + decoder, no LM head) from a config."""
    from transformers import LlavaConfig, LlavaModel

    return LlavaModel(LlavaConfig(**backbone.architecture))


def load_llava(backbone: BackboneConfig, source: str) -> tuple[nn.Module, BackboneConfig]:
    """LLaVA weights from a hub id or a ``save_pretrained`` directory (the LM head is dropped)."""
    from transformers import LlavaForConditionalGeneration

    model = own_memory(from_pretrained(LlavaForConditionalGeneration, source).model)
    return model, resolved_backbone(backbone, model.config, source)


def load_vision_encoder(model: MLLMEmbedder, source: str) -> None:
    """Put a pretrained ViT (CLIP, SigLIP or a dual-encoder backbone dir) into the MLLM."""
    from transformers import AutoModel

    location, _ = resolve_source(source)
    vision = from_pretrained(AutoModel, source).vision_model
    size = model.mllm.config.vision_config.image_size
    preprocess = read_preprocessor(location, size, model.config.backbone.preprocess)
    put_vision_encoder(model, vision, preprocess, source)


def put_vision_encoder(
    model: MLLMEmbedder, vision: nn.Module, preprocess: PreprocessConfig, source: str
) -> None:
    """Copy ``vision`` (a ViT of the same architecture) into the MLLM, with its preprocessing."""
    _check_same_vision(vision.config, model.mllm.config.vision_config, source)
    vision = getattr(vision, "vision_model", vision)  # CLIPVisionModel wraps the transformer
    target = model.mllm.vision_tower
    target = getattr(target, "vision_model", target)
    try:
        target.load_state_dict(vision.state_dict(), strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"vision_init {source!r} does not fit the vision tower of {model.config.name}: "
            f"{str(error).splitlines()[0]}"
        ) from None
    backbone = dataclasses.replace(model.config.backbone, preprocess=preprocess)
    model.config = dataclasses.replace(model.config, backbone=backbone)
    log.info("vision tower initialised from %s", source)


VISION_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "patch_size",
    "image_size",
    "hidden_act",
)


def _check_same_vision(source_config: Any, target_config: Any, source: str) -> None:
    """Refuse a ViT whose architecture differs (equal shapes can still hide another activation)."""
    differ = [
        f"{name} {getattr(source_config, name, None)!r} vs {getattr(target_config, name, None)!r}"
        for name in VISION_FIELDS
        if getattr(source_config, name, None) != getattr(target_config, name, None)
    ]
    if differ:
        raise ValueError(
            f"vision_init {source!r} does not fit the vision tower (source vs model): "
            + "; ".join(differ)
        )
