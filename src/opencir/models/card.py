"""The model card (``README.md``) written into every checkpoint folder.

The Hugging Face Hub shows a repository's ``README.md`` as its model card: YAML front
matter (``library_name``, ``tags``, ``license``), then Markdown. The card says what the
checkpoint is (method and seed paper, backbone), what it was trained on and how, how it
scored, and how to reproduce it — from records the toolkit kept. Whatever was not recorded is
written as unknown, never guessed. The records sit under the ``opencir`` key of the front
matter, so :func:`update_model_card` can add an evaluation and render the card again.
Loading a checkpoint never reads the card.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from opencir.atomic import atomic_write
from opencir.models.config import ModelConfig

CARD_FILE = "README.md"
UNKNOWN = "unknown"

S1_PAPER = "Scaling Prompt Instructed Zero Shot Composed Image Retrieval with Image-Only Data"
S2_PAPER = "Compositional Image Retrieval Via Instruction-aware Contrastive Learning"
S1 = f"S1 — InstructCIR embedding reformulation network (Duan et al., *{S1_PAPER}*)"
S2 = (
    f"S2 — instruction-aware multimodal-LLM embedder (Zhong et al., *{S2_PAPER}*, arXiv:2412.05756)"
)
METHODS = {
    "instructcir": S1,
    "mllm": S2,
    "image-only": "baseline — the backbone's image embedding alone (training-free)",
    "text-only": "baseline — the backbone's text embedding alone (training-free)",
    "sum": "baseline — sum of the backbone's normalised image and text embeddings (training-free)",
    "combiner": "baseline — CLIP4Cir-style learned combiner over image and text embeddings",
}
# What an evaluation JSON contributes to the card (rankings and per-query values stay out).
RESULT_FIELDS = (
    "benchmark",
    "split",
    "metrics",
    "group_mean",
    "protocol",
    "num_queries",
    "num_gallery",
    "model_fingerprint",
    "dataset_fingerprint",
)


@dataclass(frozen=True)
class CardRecords:
    """What is known about a checkpoint beyond its config.

    ``training``: the resolved training recipe (``TrainConfig.to_dict()``); ``data``: one
    record per training data source (path, kind, generation provenance); ``results``:
    evaluation summaries (fields of :data:`RESULT_FIELDS`); ``license``: the licence the
    weights are published under, when the publisher states it.
    """

    training: Mapping[str, Any] | None = None
    data: Sequence[Mapping[str, Any]] = ()
    results: Sequence[Mapping[str, Any]] = ()
    license: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(
            json.dumps(
                {
                    "training": self.training,
                    "data": list(self.data),
                    "results": list(self.results),
                    "license": self.license,
                },
                default=str,
            )
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CardRecords:
        return cls(
            training=data.get("training"),
            data=tuple(data.get("data") or ()),
            results=tuple(data.get("results") or ()),
            license=data.get("license"),
        )


@dataclass(frozen=True)
class ModelCard:
    """A checkpoint's identity (its config) plus the :class:`CardRecords` kept about it."""

    config: ModelConfig
    records: CardRecords = field(default_factory=CardRecords)

    def front_matter(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "library_name": "opencir",
            "tags": ["composed-image-retrieval", "image-retrieval", "opencir", self.config.method],
        }
        if self.records.license:
            meta["license"] = self.records.license
        meta["opencir"] = {"model": self.config.name, **self.records.to_dict()}
        return meta

    def render(self) -> str:
        sections = (
            self._method(),
            self._backbone(),
            self._training_data(),
            self._results(),
            self._reproduce(),
            self._license(),
            self._usage(),
        )
        head = yaml.safe_dump(self.front_matter(), sort_keys=False, allow_unicode=True)
        title = f"# {self.config.name}\n\nAn OpenCIR checkpoint for composed image retrieval."
        return f"---\n{head}---\n\n{title}\n\n" + "\n\n".join(sections) + "\n"

    def _method(self) -> str:
        method = METHODS.get(self.config.method, f"`{self.config.method}`")
        return f"## Method\n\n{method}. Registry name: `{self.config.name}`."

    def _backbone(self) -> str:
        backbone = self.config.backbone
        lines = [
            f"- family: `{backbone.family}`",
            f"- initial weights: {_code(backbone.pretrained) or 'none recorded (random init)'}",
            f"- image size: {backbone.preprocess.size} px",
        ]
        if backbone.text_source:
            lines.append(f"- text encoder weights: `{backbone.text_source}`")
        return "## Backbone\n\n" + "\n".join(lines)

    def _training_data(self) -> str:
        training = self.records.training
        if training is None:
            return (
                "## Training data and provenance\n\n"
                f"{UNKNOWN.capitalize()}: this checkpoint was saved outside `opencir train`, "
                "so no training record was kept."
            )
        lines = [
            f"- stage: `{training.get('stage', UNKNOWN)}`, {training.get('steps', UNKNOWN)} "
            f"steps, batch size {training.get('batch_size', UNKNOWN)}, "
            f"seed {training.get('seed', UNKNOWN)}",
            f"- started from: {_code(training.get('init')) or _start(training)}",
        ]
        lines += [_data_line(record) for record in self.records.data] or [
            f"- data: {UNKNOWN} (no data source recorded)"
        ]
        return "## Training data and provenance\n\n" + "\n".join(lines)

    def _results(self) -> str:
        if not self.records.results:
            return (
                "## Evaluation results\n\nNone recorded. Add a results file written by "
                "`opencir eval --out FILE` with `opencir.models.update_model_card(DIR, FILE)`."
            )
        blocks = [_result_block(result) for result in self.records.results]
        return "## Evaluation results\n\n" + "\n\n".join(blocks)

    def _reproduce(self) -> str:
        training = self.records.training
        if training is None:
            return f"## How to reproduce\n\n{UNKNOWN.capitalize()}: no training recipe recorded."
        recipe = yaml.safe_dump(dict(training), sort_keys=False, allow_unicode=True)
        return (
            "## How to reproduce\n\nSave the resolved recipe below as `recipe.yaml` "
            "(paths are those of the original run), then:\n\n"
            "```bash\nopencir train --recipe recipe.yaml\n```\n\n"
            f"```yaml\n{recipe}```"
        )

    def _license(self) -> str:
        if self.records.license:
            return f"## License\n\n`{self.records.license}`."
        return (
            f"## License\n\n{UNKNOWN.capitalize()}: not stated when the checkpoint was saved "
            "(check the licences of the backbone weights and the training data)."
        )

    def _usage(self) -> str:
        return (
            "## Usage\n\n```python\nimport opencir\n\n"
            'model = opencir.load("OWNER/REPO")  # this repository, or the downloaded folder\n'
            "query = model.encode_query([reference_image], [modification_text])\n"
            "gallery = model.encode_target(gallery_images)\n```"
        )


def _code(value: Any) -> str:
    return f"`{value}`" if value else ""


def _start(training: Mapping[str, Any]) -> str:
    """What the weights were initialised from when no OpenCIR checkpoint was the start."""
    parts = [
        f"{label} `{training[key]}`"
        for key, label in (
            ("pretrained", "backbone weights"),
            ("text_init", "text encoder"),
            ("vision_init", "vision encoder"),
        )
        if training.get(key)
    ]
    return ", ".join(parts) or f"the registered architecture `{training.get('model', UNKNOWN)}`"


def _data_line(record: Mapping[str, Any]) -> str:
    provenance = record.get("provenance")
    described = json.dumps(provenance, sort_keys=True) if provenance else f"{UNKNOWN} (no manifest)"
    return (
        f"- {record.get('kind', 'data')} `{record.get('path', UNKNOWN)}` — provenance: {described}"
    )


def _result_block(result: Mapping[str, Any]) -> str:
    metrics = result.get("metrics") or {}
    rows = "\n".join(f"| {name} | {value:.2f} |" for name, value in metrics.items())
    table = f"| metric | value |\n|---|---|\n{rows}" if rows else "No metrics (no ground truth)."
    protocol = json.dumps(result.get("protocol") or {}, sort_keys=True)
    return (
        f"### {result.get('benchmark', UNKNOWN)} / {result.get('split', UNKNOWN)}\n\n{table}\n\n"
        f"{result.get('num_queries', UNKNOWN)} queries, {result.get('num_gallery', UNKNOWN)} "
        f"gallery images; protocol {protocol}; model fingerprint "
        f"`{result.get('model_fingerprint', UNKNOWN)}` (compare `opencir.load(DIR).fingerprint()`)."
    )


def result_summary(results: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """The card's view of an evaluation: a results JSON file (or its dict), trimmed."""
    if not isinstance(results, Mapping):
        path = Path(results)
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"results file {path} is not a readable JSON file: {error}") from None
        if not isinstance(results, Mapping):
            raise ValueError(f"results file {path} must hold a JSON object")
    if "benchmark" not in results or "metrics" not in results:
        raise ValueError(
            "results must be an `opencir eval --out` JSON (with 'benchmark' and 'metrics'), "
            f"got keys {sorted(results)[:10]}"
        )
    return {key: results[key] for key in RESULT_FIELDS if key in results}


def write_model_card(directory: str | Path, card: ModelCard) -> Path:
    """Write (atomically) ``README.md`` into a checkpoint folder."""
    return atomic_write(Path(directory) / CARD_FILE, card.render().encode())


def read_card_records(directory: str | Path) -> CardRecords:
    """The records of an existing card (empty records when there is no card)."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return CardRecords()
    text = path.read_text(encoding="utf-8")
    _, sep, rest = text.partition("---\n")
    head, sep2, _ = rest.partition("\n---\n")
    meta = yaml.safe_load(head) if sep and sep2 else None
    if not isinstance(meta, dict) or not isinstance(meta.get("opencir"), dict):
        raise ValueError(f"{path} has no OpenCIR model-card front matter (an 'opencir' key)")
    return CardRecords.from_dict(meta["opencir"])
