"""Training configuration: frozen dataclasses, YAML recipes and ``key.sub=value`` overrides."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, NoReturn, Union, get_args, get_origin, get_type_hints

import yaml

from opencir.train.text_noise import load_synonyms

STAGES = ("lm", "pretrain", "cir", "combiner", "writer")


@dataclass(frozen=True)
class DataConfig:
    """Where training examples come from.

    ``pretrain`` reads image–caption pairs from ``pairs`` (a collection manifest with a caption
    field) and from every collection of ``extra_pairs`` beside it (e.g. a ShapesCIR world in the
    XKCD palette for a wider colour vocabulary); ``split`` and ``caption_field`` apply to each.
    ``cir`` reads them too when ``pair_loss_weight`` is set. ``negative_caption_field``
    (pretrain) names a field of every captioned image holding a caption (or a list of them)
    that does *not* describe it — e.g. a ShapesCIR scene with two objects' colours swapped
    (``opencir.data.worlds.shapes.binding_swap``) or one object's shape changed — added as
    hard negatives to the image→text softmax, so the image tower must bind attributes to
    objects and tell the attributes the captions differ in apart (NegCLIP).
    ``region_field`` (pretrain, with ``region_loss_weight``) names a field listing regions of
    the image, each ``{"box": [x0, y0, x1, y1], "caption": ...}`` (box in fractions of the
    image's width and height), e.g. one per object of a ShapesCIR scene, for the region loss.
    ``cir``/``combiner`` read triplet files: ``triplets`` (generated) and ``labelled``
    (annotated), mixed so a fraction ``labelled_ratio`` of every batch is labelled — the
    semi-supervised setting of seed 001.
    ``max_triplets`` caps the generated set (the data-scaling curve). ``word_dropout``
    (cir/combiner) leaves each word of a triplet's modification text out with that probability,
    drawn afresh in every batch (:mod:`opencir.train.text_noise`); ``synonyms`` (cir/combiner)
    names a JSON table of word → synonyms, and each whole-word occurrence of a listed word in
    a triplet's text is swapped for one of its synonyms (an empty one leaves the word out) with
    probability ``synonym_rate``, also drawn afresh in every batch. ``writer`` reads ``seeds``:
    JSONL rows of caption A, caption B and change text (``opencir writer seed`` makes them).
    """

    triplets: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ()
    labelled: tuple[str, ...] = ()
    labelled_ratio: float = 0.0
    max_triplets: int | None = None
    pairs: str | None = None
    extra_pairs: tuple[str, ...] = ()
    caption_field: str = "alt_text"
    negative_caption_field: str | None = None
    region_field: str | None = None
    split: str | None = "train"
    workers: int = 0
    word_dropout: float = 0.0
    synonyms: str | None = None
    synonym_rate: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.labelled_ratio <= 1.0:
            raise ValueError(f"data.labelled_ratio must be in [0, 1], got {self.labelled_ratio}")
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"data.word_dropout must be in [0, 1), got {self.word_dropout}")
        if not 0.0 <= self.synonym_rate <= 1.0:
            raise ValueError(f"data.synonym_rate must be in [0, 1], got {self.synonym_rate}")
        if self.synonyms:
            load_synonyms(self.synonyms)  # a bad table fails here, not at the first batch
        if self.extra_pairs and not self.pairs:
            raise ValueError("data.extra_pairs go beside data.pairs: set data.pairs too")


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
class LoRASettings:
    """LoRA adapters (peft) on a language model's ``lora_targets`` projections."""

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

    def __post_init__(self) -> None:
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass(frozen=True)
class MLLMTrainConfig(LoRASettings):
    """What the S2 (``mllm-*``) stages train.

    ``lora_rank > 0`` wraps the language model's ``lora_targets`` in LoRA adapters (peft;
    merged into the weights on export); ``lora_rank: 0`` trains the whole language model
    (the ``lm`` stage always does). The projector trains unless ``train_projector`` is off;
    the vision tower stays frozen unless ``train_vision`` is on.
    """

    train_projector: bool = True
    train_vision: bool = False


@dataclass(frozen=True)
class WriterTrainConfig(LoRASettings):
    """The ``writer`` stage: LoRA on a chat LM (``model``: a directory or GGUF) as the writer.

    The input is the reformulation request (``prompt``; ``None``: the seed paper's, as
    ``generate --writer llm`` sends it) in the model's chat template; the loss covers the
    answer tokens only. Longer examples are cut to ``max_length`` tokens from the left.
    ``lora_layers``: adapters in the top N transformer layers only (``None``: all);
    backpropagation then stops below them, which makes a step much cheaper on a CPU.
    """

    lora_rank: int = 8
    lora_layers: int | None = None
    prompt: str | None = None
    max_words: int = 12
    max_length: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lora_rank < 1:
            raise ValueError(f"writer.lora_rank must be >= 1, got {self.lora_rank}")
        if self.lora_layers is not None and self.lora_layers < 1:
            raise ValueError(f"writer.lora_layers must be >= 1 or null, got {self.lora_layers}")
        if self.max_length < 16:
            raise ValueError(f"writer.max_length must be >= 16, got {self.max_length}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    ``model`` is a registry name; ``pretrained`` the backbone weights (hub id or directory);
    ``init`` an OpenCIR checkpoint to start from (e.g. the CIR-trained model for the combiner
    stage); ``text_init`` the pretrained text encoder of a ``dual`` backbone for pretraining;
    ``vision_init`` a pretrained ViT (CLIP/SigLIP/dual backbone dir, or an OpenCIR checkpoint of a
    dual-encoder method) for an ``mllm-*`` model.

    Stages: ``pretrain`` (image–text contrastive; for ``mllm-*`` models S2's stage 1),
    ``cir`` (triplets; S2's stage 2), ``combiner`` (S1's Eq. 3), ``lm`` (next-token
    pretraining of an ``mllm-*`` model's small decoder on captions) and ``writer`` (S1's
    change writer: LoRA on a chat LM, whose ``model`` is a directory or GGUF, on
    ``data.seeds``).

    ``hard_negatives`` (cir/combiner): every triplet also gets that many of its target's
    nearest images in the training pool as extra negatives; (pretrain) every image–caption
    pair brings that many pairs with the nearest other captions, so a batch holds
    ``batch_size × (1 + hard_negatives)`` pairs (:mod:`opencir.train.negatives`).
    ``reference_negatives`` makes every reference image an extra negative.
    ``cache_fixed_targets`` (cir/combiner): when the model's target encoder is fixed (an
    InstructCIR model with ``ema_momentum: 1``), embed every training image through it once
    before the first step instead of in every batch (:mod:`opencir.train.fixed_targets`).
    ``pool_negatives`` (cir/combiner, needs that table): every training image is a candidate
    for every query, instead of the batch's targets, references and mined negatives.
    ``pair_loss_weight`` (cir, dual-encoder InstructCIR): every step also takes a batch of
    ``batch_size`` image–caption pairs from ``data.pairs`` (and ``data.extra_pairs``) and adds
    this weight times the pretraining objective on them (image–text contrastive, through the
    query encoder's own image and text towers at the backbone's logit scale), so the towers
    keep what pretraining taught while the CIR loss trains them.
    ``region_loss_weight`` (pretrain, CLIP-layout towers): adds this weight times a region
    loss: each region of ``data.region_field`` is the mean of the ViT's projected patch
    tokens whose centres fall in its box, classified among the distinct region captions of
    the step's batch (a softmax over their text embeddings at the tower's logit scale), so
    patch tokens must carry what the caption says of the object they show — its shape as
    well as its colour — where the image-level loss asks it of the class token alone.

    ``batch_size`` is the global batch of one optimizer step: torchrun's ranks and the
    ``grad_accum`` micro-batches split it evenly, and the loss is that of the whole batch.
    """

    stage: str
    model: str
    out_dir: str
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    temperature: float = 0.07
    reference_negatives: bool = False
    hard_negatives: int = 0
    cache_fixed_targets: bool = True
    pool_negatives: bool = False
    pair_loss_weight: float = 0.0
    region_loss_weight: float = 0.0
    pretrained: str | None = None
    init: str | None = None
    text_init: str | None = None
    vision_init: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mllm: MLLMTrainConfig = field(default_factory=MLLMTrainConfig)
    writer: WriterTrainConfig = field(default_factory=WriterTrainConfig)
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
        counts = (
            "steps",
            "batch_size",
            "grad_accum",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
        )
        for name in counts:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto/fp32/bf16, got {self.precision!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.hard_negatives < 0:
            raise ValueError(f"hard_negatives must be >= 0, got {self.hard_negatives}")
        if self.hard_negatives and self.stage not in ("cir", "combiner", "pretrain"):
            raise ValueError(
                f"hard_negatives applies to the pretrain, cir and combiner stages, "
                f"not {self.stage!r}"
            )

        for option in ("synonyms", "word_dropout"):  # they rework triplet texts only
            if getattr(self.data, option) and self.stage not in ("cir", "combiner"):
                raise ValueError(
                    f"data.{option} applies to the triplet texts of the cir and combiner "
                    f"stages, not {self.stage!r}"
                )
        if self.pool_negatives and (self.stage not in ("cir", "combiner") or self.hard_negatives):
            raise ValueError(
                "pool_negatives applies to the cir and combiner stages, with hard_negatives: 0 "
                f"(the pool holds every image a miner could pick); got stage {self.stage!r}, "
                f"hard_negatives {self.hard_negatives}"
            )

        self._check_pair_loss()
        self._check_pretrain_options()

    def _check_pretrain_options(self) -> None:
        data = self.data
        if data.negative_caption_field is not None and not data.negative_caption_field:
            raise ValueError("data.negative_caption_field must be a field name or null")
        if (data.negative_caption_field or data.region_field) and self.stage != "pretrain":
            raise ValueError(
                "data.negative_caption_field and data.region_field apply to the pretrain "
                f"stage, not {self.stage!r}"
            )
        if self.region_loss_weight < 0:
            raise ValueError(f"region_loss_weight must be >= 0, got {self.region_loss_weight}")
        if bool(self.region_loss_weight) != bool(data.region_field):
            raise ValueError(
                "region_loss_weight and data.region_field go together: got weight "
                f"{self.region_loss_weight}, field {data.region_field!r}"
            )
        if self.region_loss_weight and self.grad_accum > 1:
            raise ValueError(
                "region_loss_weight needs grad_accum: 1 (a region's caption is an index "
                "into its own micro-batch's captions)"
            )

    def _check_pair_loss(self) -> None:
        if self.pair_loss_weight < 0:
            raise ValueError(f"pair_loss_weight must be >= 0, got {self.pair_loss_weight}")
        if self.pair_loss_weight and (self.stage != "cir" or not self.data.pairs):
            raise ValueError(
                "pair_loss_weight adds the image–caption loss to the cir stage and reads "
                f"data.pairs: got stage {self.stage!r}, data.pairs {self.data.pairs!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate a config dataclass from a dict, checking every key and value type.

    ``prefix`` is the dotted path of the section (``"optim."``), so errors name the full key.
    """
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        section = prefix.rstrip(".") or "the top level"
        raise ValueError(f"unknown key(s) {unknown} in {section}; expected some of {sorted(known)}")
    missing = sorted(name for name, f in known.items() if _required(f) and name not in data)
    if missing:
        raise ValueError(f"missing required key(s) {[prefix + name for name in missing]}")
    hints = get_type_hints(cls)
    return cls(
        **{name: _convert(hints[name], value, prefix + name) for name, value in data.items()}
    )


def _required(field_: dataclasses.Field) -> bool:
    return field_.default is MISSING and field_.default_factory is MISSING


def _convert(hint: Any, value: Any, key: str, shown: Any = None) -> Any:
    """``value`` as the field type ``hint``; a ValueError names the key, value and type.

    ``shown`` is the type an error message states (the whole ``int | None``, not ``int``).
    """
    origin, args, shown = get_origin(hint), get_args(hint), shown or hint
    if dataclasses.is_dataclass(hint):
        return _build(hint, _section(value, key), key + ".")
    if origin in (Union, UnionType):
        if value is None and NoneType in args:
            return None
        (inner,) = (arg for arg in args if arg is not NoneType)
        return _convert(inner, value, key, shown=hint)
    if origin is tuple:
        return _convert_tuple(hint, value, key, shown)
    if origin is dict:
        return _convert_dict(hint, value, key, shown)
    if hint is Any:
        return value
    return _convert_scalar(hint, value, key, shown)


def _section(value: Any, key: str) -> dict[str, Any]:
    """A nested section (``data:``, ``optim:``); an empty one means all defaults."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key} must be a section of key: value pairs, got {value!r}")
    return value


def _convert_tuple(hint: Any, value: Any, key: str, shown: Any) -> tuple:
    """A list; where a list of strings is expected, one string stands for a list of one."""
    item_types = get_args(hint)
    variadic = item_types[1:] == (Ellipsis,)
    if variadic and item_types[0] is str and isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not (variadic or len(value) == len(item_types)):
        return _wrong_type(shown, value, key)
    if variadic:
        item_types = (item_types[0],) * len(value)
    return tuple(
        _convert(item_type, item, f"{key}[{i}]")
        for i, (item_type, item) in enumerate(zip(item_types, value, strict=True))
    )


def _convert_dict(hint: Any, value: Any, key: str, shown: Any) -> dict:
    if not isinstance(value, dict):
        return _wrong_type(shown, value, key)
    key_type, value_type = get_args(hint)
    return {
        _convert(key_type, name, f"{key} (a key)"): _convert(value_type, item, f"{key}.{name}")
        for name, item in value.items()
    }


def _convert_scalar(hint: type, value: Any, key: str, shown: Any) -> Any:
    """bool, int, float or str. YAML reads ``3e-4`` as a string, so numbers may be strings."""
    number = _number(value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and number is not None and float(number).is_integer():
        return int(number)
    if hint is float and number is not None:
        return float(number)
    if hint is str and isinstance(value, str):
        return value
    return _wrong_type(shown, value, key)


def _number(value: Any) -> int | float | None:
    """A finite number from an int, float or numeric string; ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return None


def _wrong_type(hint: Any, value: Any, key: str) -> NoReturn:
    raise ValueError(f"{key} must be {_describe(hint)}, got {value!r} ({type(value).__name__})")


_SCALAR_NAMES = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    Any: "any value",
}


def _describe(hint: Any) -> str:
    """``int | None`` → "an integer or null"; ``tuple[float, ...]`` → "a list, each a number"."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join([_describe(a) for a in args if a is not NoneType] + ["null"])
    if origin is tuple and args[1:] == (Ellipsis,):
        one_string = " (or one string)" if args[0] is str else ""
        return f"a list, each {_describe(args[0])}{one_string}"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    return _SCALAR_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


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
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        node[leaf] = parse_yaml(raw, f"the value of override {item!r}")
    return data


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` whose syntax errors name ``source`` and the line, without a traceback."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"{source} is not valid YAML{line}: {problem}") from error


def config_from_dict(data: Any, where: str = "recipe") -> TrainConfig:
    """Build a :class:`TrainConfig`, checking every key and value type; errors name ``where``."""
    if not isinstance(data, dict):
        raise ValueError(
            f"{where} must be a mapping of key: value lines, got {type(data).__name__}"
        )
    try:
        return _build(TrainConfig, data)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from error


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML recipe (one stage) and apply CLI overrides; paths are relative to the cwd.

    Every value is checked against its field's type, whether it comes from the file or an
    override. A key that takes a list of strings (``data.triplets``, ``data.labelled``,
    ``freeze``, ``mllm.lora_targets``) also takes one string, as a list of one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found")
    data = parse_yaml(path.read_text(), f"recipe {path}")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping, got {type(data).__name__}")
    return config_from_dict(apply_overrides(data, overrides or []), where=f"recipe {path}")
