"""The ``writer`` stage: LoRA fine-tuning of a chat LM as S1's change writer (§II-A).

The model (``model:`` in the recipe) is a causal LM from a directory or a GGUF file. Each
seed (caption A, caption B, change text) becomes the request ``generate --writer llm`` sends,
rendered by the model's chat template, followed by the change text and the end-of-turn
token; the loss is the cross-entropy of those answer tokens only. The trainer, its
checkpoints and ``--resume`` are the ones every stage uses; a checkpoint holds the adapter
tensors (the frozen base is reloaded from ``model``). Export writes ``final/`` (adapters
merged: a plain ``save_pretrained`` model with its tokenizer, servable by ``--writer hf`` or
any OpenAI-compatible server) and ``adapter/`` (the LoRA adapter alone, peft format).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

from opencir.atomic import atomic_write, fsync_tree, staging_dir, swap_in
from opencir.generate.causal_lm import WRITER_RECORD, chat_prompt, load_causal_lm, load_tokenizer
from opencir.generate.prompts import REFORMULATION_PROMPT, reformulation_request
from opencir.generate.writer_seeds import WriterSeed, read_seeds
from opencir.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from opencir.train.config import TrainConfig, WriterTrainConfig
from opencir.train.distributed import DistContext
from opencir.train.tasks import Task

log = logging.getLogger(__name__)

IGNORE = -100  # label of the tokens the loss skips (prompt and padding)
TRAINING_FILE = WRITER_RECORD


@dataclass(frozen=True)
class WriterExample:
    """A request (unrendered) and the answer the writer should give."""

    request: str
    answer: str


class SeedDataset(Dataset):
    """Writer seeds as ``{"text": WriterExample}`` items for the shared collate."""

    def __init__(self, seeds: Sequence[WriterSeed], settings: WriterTrainConfig) -> None:
        template = settings.prompt or REFORMULATION_PROMPT
        self.examples = [
            WriterExample(
                reformulation_request(s.caption_a, s.caption_b, template, settings.max_words),
                s.text,
            )
            for s in seeds
        ]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"text": self.examples[index]}


def seed_dataset(config: TrainConfig) -> SeedDataset:
    if not config.data.seeds:
        raise ValueError("the writer stage needs data.seeds (JSONL from `opencir writer seed`)")
    return SeedDataset(read_seeds(config.data.seeds), config.writer)


class AnswerTokenizer:
    """Examples → ``input_ids``, ``attention_mask`` and ``labels`` (answer tokens only).

    Right-padded; an example longer than ``max_length`` loses tokens from the start of its
    prompt, never from its answer. Picklable, so it runs inside DataLoader workers.
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length

    def encode(self, example: WriterExample) -> tuple[list[int], list[int]]:
        prompt = chat_prompt(self.tokenizer, example.request)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = self.tokenizer(example.answer.strip(), add_special_tokens=False)["input_ids"]
        answer_ids = [*answer_ids, self.tokenizer.eos_token_id][: self.max_length - 1]
        prompt_ids = prompt_ids[-(self.max_length - len(answer_ids)) :]
        return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids

    def __call__(self, examples: Sequence[WriterExample]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(example) for example in examples]
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, targets) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(ids)] = torch.tensor(targets)
            mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class WriterModel(nn.Module):
    """A causal LM with LoRA adapters, shaped for the shared trainer and its checkpoints.

    ``state_dict``/``load_state_dict`` cover the adapter tensors only: they are all a
    training checkpoint needs, since the base weights never change and reload from
    ``source``.
    """

    def __init__(self, source: str, settings: WriterTrainConfig) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.source, self.settings = source, settings
        self.tokenizer = load_tokenizer(source)
        base = load_causal_lm(source)
        lora = LoraConfig(
            r=settings.lora_rank,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=list(settings.lora_targets),
            layers_to_transform=_top_layers(base, settings.lora_layers),
            task_type="CAUSAL_LM",
        )
        self.lm = get_peft_model(base, lora)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def image_preprocessor(self) -> None:
        """The trainer's collate asks for one; writer examples hold no images."""
        return None

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.lm.gradient_checkpointing_enable({"use_reentrant": False})

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if "lora_" in name}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {name: p.detach() for name, p in self.adapter_parameters().items()}

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ) -> None:
        params = self.adapter_parameters()
        if set(state_dict) != set(params):
            raise ValueError("the adapter tensors do not match this writer's LoRA layout")
        with torch.no_grad():
            for name, tensor in state_dict.items():
                params[name].copy_(tensor)

    def save(self, directory: Path, records: Any = None) -> Path:
        """The adapter tensors and the settings that shape them (a training checkpoint)."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {name: t.contiguous().cpu() for name, t in self.state_dict().items()}
        save_file(tensors, str(directory / WEIGHTS_FILE))
        config = {"kind": "opencir-writer-adapter", "base": self.source, **vars(self.settings)}
        atomic_write(directory / CONFIG_FILE, json.dumps(config, indent=2).encode())
        return directory

    def answer_nll(self, tokens: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per example: summed cross-entropy of its answer tokens, and how many there are.

        The output head runs on answer positions only (most positions are prompt).
        """
        lm = self.lm.get_base_model()
        hidden = lm.get_decoder()(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).last_hidden_state[:, :-1]
        labels = tokens["labels"][:, 1:]
        scored = labels != IGNORE
        logits = lm.get_output_embeddings()(hidden[scored])
        nll = nn.functional.cross_entropy(logits.float(), labels[scored], reduction="none")
        rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)
        per_example = torch.zeros(labels.shape[0], device=nll.device).index_add(
            0, rows[scored], nll
        )
        return per_example, scored.sum(dim=1).float()


def _top_layers(model: nn.Module, count: int | None) -> list[int] | None:
    """Indices of the top ``count`` transformer layers (``None``: every layer)."""
    if count is None:
        return None
    total = model.config.num_hidden_layers
    if count > total:
        raise ValueError(f"writer.lora_layers={count} but the model has {total} layers")
    return list(range(total - count, total))


class WriterTask(Task):
    """Trains the LoRA adapters of a :class:`WriterModel` on writer seeds."""

    model: WriterModel

    @classmethod
    def from_config(cls, config: TrainConfig) -> WriterTask:
        return cls(config, WriterModel(config.model, config.writer))  # type: ignore[arg-type]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.model.adapter_parameters().values())

    def text_tokenizer(self) -> AnswerTokenizer:
        return AnswerTokenizer(self.model.tokenizer, self.config.writer.max_length)

    def embeddings(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.answer_nll(batch["tokens"])

    def loss(self, outputs: tuple[torch.Tensor, ...], ctx: DistContext) -> torch.Tensor:
        nll, counts = outputs
        return nll.sum() / counts.sum().clamp(min=1.0)

    def export(self, out_dir: Path) -> Path:
        """``adapter/`` (LoRA alone) then ``final/`` (merged model + tokenizer)."""
        record = json.dumps(self._record(), indent=2, ensure_ascii=False).encode()
        for adapter in self.model.lm.peft_config.values():  # the recipe's own name for the base
            adapter.base_model_name_or_path = self.config.model
        self._write_folder(out_dir / "adapter", self.model.lm.save_pretrained, record)
        merged = self.model.lm.merge_and_unload()
        tokenizer = self.model.tokenizer

        def save_merged(folder: Path) -> None:
            merged.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        final = self._write_folder(out_dir / "final", save_merged, record)
        log.info("writer exported: merged model %s, adapter %s", final, out_dir / "adapter")
        return final

    @staticmethod
    def _write_folder(target: Path, write: Any, record: bytes) -> Path:
        """Build a folder in a staging place, then rename it into ``target`` atomically."""
        staging = staging_dir(target.parent, f".{target.name}.")
        write(staging)
        (staging / TRAINING_FILE).write_bytes(record)
        fsync_tree(staging)
        swap_in(staging, target)
        return target

    def _record(self) -> dict[str, Any]:
        """The recipe and where each seed file came from (kinds of seed and their counts)."""
        sources = []
        for path in self.config.data.seeds:
            kinds: dict[str, int] = {}
            for seed in read_seeds([path]):
                kind = str(seed.provenance.get("kind", "unknown"))
                kinds[kind] = kinds.get(kind, 0) + 1
            sources.append({"path": path, "kinds": kinds})
        return {
            "base": self.config.model,
            "prompt": self.config.writer.prompt or REFORMULATION_PROMPT,
            "training": self.config.to_dict(),
            "seeds": sources,
        }
