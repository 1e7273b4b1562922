"""Training configuration: frozen dataclasses, YAML recipes and ``key.sub=value`` overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

STAGES = ("lm", "pretrain", "cir", "combiner")


@dataclass(frozen=True)
class DataConfig:
    """Where training examples come from.

    ``pretrain`` reads image–caption pairs from ``pairs`` (a collection manifest with a
    caption field). ``cir``/``combiner`` read triplet files: ``triplets`` (generated) and
    ``labelled`` (annotated), mixed so a fraction ``labelled_ratio`` of every batch is
    labelled — the semi-supervised setting of seed 001. ``max_triplets`` caps the generated
    set (the data-scaling curve).
    """

    triplets: tuple[str, ...] = ()
    labelled: tuple[str, ...] = ()
    labelled_ratio: float = 0.0
    max_triplets: int | None = None
    pairs: str | None = None
    caption_field: str = "alt_text"
    split: str | None = "train"
    workers: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.labelled_ratio <= 1.0:
            raise ValueError(f"data.labelled_ratio must be in [0, 1], got {self.labelled_ratio}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay (the paper: AdamW, weight decay 0.1).

    ``lr_scale`` maps a parameter-name fragment to a learning-rate multiplier, e.g.
    ``{text_model: 0.1}`` to move a pretrained text tower slower than a fresh image tower.
    """

    lr: float = 1e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 100
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0
    lr_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(
                f"optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}"
            )
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")


@dataclass(frozen=True)
class MLLMTrainConfig:
    """What the S2 (``mllm-*``) stages train.

    ``lora_rank > 0`` wraps the language model's ``lora_targets`` in LoRA adapters (peft;
    merged into the weights on export); ``lora_rank: 0`` trains the whole language model
    (the ``lm`` stage always does). The projector trains unless ``train_projector`` is off;
    the vision tower stays frozen unless ``train_vision`` is on.
    """

    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    train_projector: bool = True
    train_vision: bool = False

    def __post_init__(self) -> None:
        if self.lora_rank < 0:
            raise ValueError(f"mllm.lora_rank must be >= 0, got {self.lora_rank}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"mllm.lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    ``model`` is a registry name; ``pretrained`` the backbone weights (hub id or directory);
    ``init`` an OpenCIR checkpoint to start from (e.g. the CIR-trained model for the combiner
    stage); ``text_init`` the pretrained text encoder of a ``dual`` backbone for pretraining;
    ``vision_init`` a pretrained ViT (CLIP/SigLIP/dual backbone dir) for an ``mllm-*`` model.

    Stages: ``pretrain`` (image–text contrastive; for ``mllm-*`` models S2's stage 1),
    ``cir`` (triplets; S2's stage 2), ``combiner`` (S1's Eq. 3) and ``lm`` (next-token
    pretraining of an ``mllm-*`` model's small decoder on captions).
    """

    stage: str
    model: str
    out_dir: str
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    temperature: float = 0.07
    reference_negatives: bool = False
    pretrained: str | None = None
    init: str | None = None
    text_init: str | None = None
    vision_init: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mllm: MLLMTrainConfig = field(default_factory=MLLMTrainConfig)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    grad_checkpointing: bool = False
    freeze: tuple[str, ...] = ()
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto/fp32/bf16, got {self.precision!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate a config dataclass from a dict, naming unknown keys and their location."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; expected some of {sorted(known)}")
    hints = get_type_hints(cls)
    values = {}
    for name, value in data.items():
        value = _coerce_number(hints[name], value, f"{where}.{name}")
        nested = (
            {"data": DataConfig, "optim": OptimConfig, "mllm": MLLMTrainConfig}.get(name)
            if cls is TrainConfig
            else None
        )
        if nested is not None and isinstance(value, dict):
            value = _build(nested, value, f"{where}.{name}")
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return cls(**values)


def _coerce_number(hint: Any, value: Any, where: str) -> Any:
    """YAML reads ``3e-4`` as a string; numbers are parsed for numeric fields, clearly."""
    if not isinstance(value, str) or not ({float, int} & set(get_args(hint) or (hint,))):
        return value
    try:
        return int(value) if int in (get_args(hint) or (hint,)) else float(value)
    except ValueError:
        raise ValueError(f"{where} must be a number, got {value!r}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (values parsed as YAML) to a nested dict copy."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value or key.sub=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def config_from_dict(data: dict[str, Any], where: str = "recipe") -> TrainConfig:
    return _build(TrainConfig, data, where)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (one stage) and apply CLI overrides; paths are relative to the cwd."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping, got {type(data).__name__}")
    return config_from_dict(apply_overrides(data, overrides or []), where=str(path))
