"""Frozen configuration dataclasses for every OpenCIR model, and their JSON form.

A :class:`ModelConfig` fully rebuilds a model: the method, the backbone architecture (the
Hugging Face config dict, so no hub access is needed to rebuild), the fusion settings and
the image preprocessing. Checkpoints store it as ``config.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PreprocessConfig:
    """How a PIL image becomes the tower's input tensor.

    ``resize="shortest_edge"`` scales the short side to ``size`` then centre-crops (CLIP);
    ``resize="squash"`` resizes straight to ``size``×``size`` (SigLIP).
    """

    size: int = 224
    resize: str = "shortest_edge"
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resample: str = "bicubic"

    def __post_init__(self) -> None:
        if self.resize not in ("shortest_edge", "squash"):
            raise ValueError(f"resize must be 'shortest_edge' or 'squash', got {self.resize!r}")
        if self.resample not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"resample must be bicubic/bilinear/nearest, got {self.resample!r}")


@dataclass(frozen=True)
class BackboneConfig:
    """A dual-encoder (image tower + text tower) backbone.

    ``architecture`` is the Hugging Face config dict of the family's model class;
    ``pretrained`` records where weights were loaded from (a hub id or a directory), or
    ``None`` for random initialisation. ``text_source`` names the pretrained text encoder a
    ``dual`` backbone started from; unchanged text weights are then left out of checkpoints.
    """

    family: str
    architecture: dict[str, Any]
    max_text_length: int = 77
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    pretrained: str | None = None
    text_source: str | None = None


@dataclass(frozen=True)
class FusionConfig:
    """Method settings (all methods share one dataclass so overrides are uniform).

    S1 (InstructCIR): ``cross_attention`` injects text cross-attention into every vision
    block; ``ema`` keeps a momentum copy as the target encoder (``ema_momentum`` 1 keeps it
    fixed: the gallery side stays the model training started from); ``predictor_hidden_mult``
    sizes the predictor MLP and ``predictor_residual`` adds the image embedding to its
    output; ``cross_attention_zero_init`` starts every cross-attention output projection at
    zero (instead of the paper's Xavier), so that with ``predictor_residual`` an untrained S1
    is exactly its backbone's image embedding; ``extra_blocks`` appends that many
    reformulation blocks after the backbone's own, each starting as the identity (copies of
    its last block with zeroed output projections); ``combiner`` enables Eq. 3 (a learned weight
    mixing the pure text embedding into the query); ``null_text`` is what targets are
    encoded with.
    Baselines: ``combiner_hidden_mult`` sizes the CLIP4Cir-style combiner.
    """

    cross_attention: bool = True
    ema: bool = True
    ema_momentum: float = 0.999
    predictor_hidden_mult: int = 2
    predictor_residual: bool = False
    cross_attention_zero_init: bool = False
    extra_blocks: int = 0
    combiner: bool = False
    combiner_init: float = 0.1
    null_text: str = ""
    combiner_hidden_mult: int = 4
    combiner_dropout: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1], got {self.ema_momentum}")
        if not 0.0 < self.combiner_init < 1.0:
            raise ValueError(f"combiner_init must be in (0, 1), got {self.combiner_init}")
        if self.predictor_hidden_mult < 1 or self.combiner_hidden_mult < 1:
            raise ValueError("hidden multipliers must be >= 1")
        if self.extra_blocks < 0:
            raise ValueError(f"extra_blocks must be >= 0, got {self.extra_blocks}")
        if self.extra_blocks and not self.cross_attention:
            raise ValueError("extra_blocks needs cross_attention (they are reformulation blocks)")


IMAGE_SLOT, TEXT_SLOT, PROMPT_SLOT = "<image>", "{text}", "{prompt}"


@dataclass(frozen=True)
class MLLMConfig:
    """How the S2 embedder prompts its multimodal LLM and pools the answer.

    Every prompt is wrapped in ``chat_template`` (its ``{prompt}`` slot) and must end where
    the model would start answering: the embedding is the hidden state there. ``<image>``
    marks where the image tokens go (expanded to the vision tower's patch count, as LLaVA
    expects) and ``{text}`` where the modification text or caption goes. The defaults ask
    for a one-word description, as the reference implementation of the method does.
    ``pooling="last"`` takes the last real token under either ``padding_side``; ``"mean"``
    averages the non-padding tokens.
    """

    query_prompt: str = (
        '<image>\nModify this image with "{text}", describe the modified image in one word:'
    )
    target_prompt: str = "<image>\nSummarize above image in one word:"
    text_prompt: str = "{text}\nSummarize above sentence in one word:"
    chat_template: str = "{prompt}"
    pooling: str = "last"
    padding_side: str = "left"
    add_bos: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"mllm pooling must be 'last' or 'mean', got {self.pooling!r}")
        if self.padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if self.chat_template.count(PROMPT_SLOT) != 1:
            raise ValueError(f"chat_template must contain {PROMPT_SLOT} exactly once")
        for name, images, texts in (
            ("query_prompt", 1, 1),
            ("target_prompt", 1, 0),
            ("text_prompt", 0, 1),
        ):
            prompt = getattr(self, name)
            if prompt.count(IMAGE_SLOT) != images or prompt.count(TEXT_SLOT) != texts:
                raise ValueError(
                    f"{name} must contain {IMAGE_SLOT} {images}x and {TEXT_SLOT} {texts}x, "
                    f"got {prompt!r}"
                )


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: name, method, backbone, fusion settings.

    ``mllm`` holds the prompt and pooling settings of the S2 embedder (``None`` otherwise).
    """

    name: str
    method: str
    backbone: BackboneConfig
    fusion: FusionConfig = field(default_factory=FusionConfig)
    mllm: MLLMConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.mllm is None:
            del data["mllm"]  # keeps configs (and fingerprints) of the other methods unchanged
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        backbone = dict(data["backbone"])
        preprocess = backbone.get("preprocess") or {}
        backbone["preprocess"] = PreprocessConfig(**_tuples(preprocess))
        return cls(
            name=data["name"],
            method=data["method"],
            backbone=BackboneConfig(**backbone),
            fusion=FusionConfig(**data.get("fusion", {})),
            mllm=MLLMConfig(**data["mllm"]) if data.get("mllm") else None,
        )

    def with_overrides(self, **overrides: Any) -> ModelConfig:
        """Return a copy with fusion, backbone or mllm fields replaced; unknown names refused."""
        fusion_names = {f.name for f in fields(FusionConfig)}
        backbone_names = {f.name for f in fields(BackboneConfig)} - {"architecture", "family"}
        mllm_names = {f.name for f in fields(MLLMConfig)} if self.mllm else set()
        unknown = set(overrides) - fusion_names - backbone_names - mllm_names
        if unknown:
            raise TypeError(
                f"unknown model override(s) {sorted(unknown)}; "
                f"fusion options are {sorted(fusion_names)}, "
                f"backbone options {sorted(backbone_names)}"
                + (f", mllm options {sorted(mllm_names)}" if mllm_names else "")
            )
        fusion = {k: v for k, v in overrides.items() if k in fusion_names}
        backbone = {k: v for k, v in overrides.items() if k in backbone_names}
        mllm = {k: v for k, v in overrides.items() if k in mllm_names}
        return dataclasses.replace(
            self,
            fusion=dataclasses.replace(self.fusion, **fusion),
            backbone=dataclasses.replace(self.backbone, **backbone),
            mllm=dataclasses.replace(self.mllm, **mllm) if self.mllm else None,
        )


def _tuples(data: dict[str, Any]) -> dict[str, Any]:
    """JSON has no tuples: turn list values back into tuples for frozen dataclasses."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
