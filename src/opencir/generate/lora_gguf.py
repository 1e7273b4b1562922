"""A tuned writer's LoRA adapter as a GGUF adapter file, for llama.cpp.

llama.cpp applies a LoRA adapter to a GGUF base model at load time (``llama-server --lora
FILE``, llama-cpp-python's ``--lora_path``), so a writer tuned with ``opencir train`` can be
served by llama.cpp on its quantised base without merging. The GGUF adapter format, as
llama.cpp reads it:

* metadata ``general.type = "adapter"``, ``general.architecture`` (must equal the base
  model's), ``adapter.type = "lora"`` and ``adapter.lora.alpha``;
* per adapted weight ``W`` (the base model's GGUF tensor name, e.g. ``blk.22.attn_q.weight``)
  two tensors ``W.lora_a`` (PyTorch shape ``[r, in]``) and ``W.lora_b`` (``[out, r]``); llama.cpp
  adds ``scale · B (A x)`` to ``W x``, with ``scale = alpha / r`` when alpha is non-zero and 1
  when it is 0.

PEFT's own scale (``lora_alpha / r``, ``/ sqrt(r)`` with rsLoRA, per-module patterns) is
folded into ``lora_b`` and alpha written as 0, so every PEFT variant maps exactly. Llama-family
GGUF files store the query and key projections with their rows permuted for llama.cpp's RoPE
layout (transformers undoes it when it loads the file); ``lora_b`` of those projections gets
the same permutation.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# GGUF architectures this exporter knows, and whether their q/k rows are RoPE-permuted.
PERMUTED_QK = {"llama": True, "qwen2": False, "qwen3": False}
_PEFT_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.\w+)?\.weight$"
)


def _read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config_path = folder / "adapter_config.json"
    weights_path = folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a PEFT LoRA adapter folder: expected adapter_config.json and "
            "adapter_model.safetensors"
        )
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{folder}: only LoRA adapters convert, got {config['peft_type']!r}")
    from safetensors.torch import load_file

    return config, load_file(str(weights_path))


def _base_metadata(base: Path) -> dict[str, Any]:
    """Architecture and attention head counts from the base GGUF's metadata."""
    from gguf import GGUFReader

    reader = GGUFReader(str(base))

    def value(key: str) -> Any:
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    if arch not in PERMUTED_QK:
        raise ValueError(
            f"{base}: architecture {arch!r} is not one this exporter maps "
            f"(known: {', '.join(sorted(PERMUTED_QK))})"
        )
    heads = value(f"{arch}.attention.head_count")
    return {
        "arch": arch,
        "blocks": int(value(f"{arch}.block_count")),
        "heads": int(heads),
        "kv_heads": int(value(f"{arch}.attention.head_count_kv") or heads),
        "tensors": {t.name for t in reader.tensors},
    }


def _scale(config: Mapping[str, Any], module: str, rank: int) -> float:
    """PEFT's multiplier of ``B A`` for ``module``: alpha / r, or alpha / sqrt(r) (rsLoRA)."""
    alpha = float(config.get("lora_alpha", rank))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def rope_permute(rows: torch.Tensor, heads: int) -> torch.Tensor:
    """The row order llama-family GGUF files use for q/k projections (per head, the two
    rotary halves interleaved), applied to a ``[heads * head_dim, ...]`` tensor."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _pairs(weights: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        match = _PEFT_KEY.match(key)
        if match is None:
            raise ValueError(f"adapter tensor {key!r} is not a lora_A/lora_B weight")
        pairs.setdefault(match["module"], {})[match["part"]] = tensor.float()
    return pairs


def gguf_lora_tensors(
    config: Mapping[str, Any], weights: Mapping[str, torch.Tensor], base: Mapping[str, Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{GGUF weight name: (lora_a, lora_b)}`` with PEFT's scale folded into ``lora_b``."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next(a for a, name in MODEL_ARCH_NAMES.items() if name == base["arch"])
    names = get_tensor_name_map(arch, base["blocks"])
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, pair in sorted(_pairs(weights).items()):
        if set(pair) != {"A", "B"}:
            raise ValueError(f"adapter module {module!r} lacks lora_{'AB'[len(pair) % 2]}")
        name = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if name is None or name not in base["tensors"]:
            raise ValueError(f"adapter module {module!r} has no weight in the base GGUF")
        lora_a, lora_b = pair["A"], pair["B"] * _scale(config, module, pair["A"].shape[0])
        if PERMUTED_QK[base["arch"]] and module.endswith(("q_proj", "k_proj")):
            heads = base["heads"] if module.endswith("q_proj") else base["kv_heads"]
            lora_b = rope_permute(lora_b, heads)
        out[name] = (lora_a.contiguous(), lora_b.contiguous())
    return out


def export_lora_gguf(adapter: str | Path, base: str | Path, out: str | Path) -> Path:
    """Write the PEFT LoRA adapter folder ``adapter`` as a llama.cpp GGUF adapter for the
    GGUF base model ``base`` (f32 tensors) and return ``out``."""
    from gguf import GGUFType, GGUFWriter, Keys

    adapter, base, out = Path(adapter), Path(base), Path(out)
    if base.suffix != ".gguf" or not base.is_file():
        raise ValueError(
            f"base model {base} is not a .gguf file: llama.cpp applies adapters to GGUF models "
            "(convert a transformers folder with llama.cpp's convert_hf_to_gguf.py first)"
        )
    config, weights = _read_adapter(adapter)
    meta = _base_metadata(base)
    tensors = gguf_lora_tensors(config, weights, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    logging.getLogger("gguf.gguf_writer").setLevel(logging.WARNING)  # its per-file chatter
    writer = GGUFWriter(str(partial), meta["arch"])
    writer.add_type(GGUFType.ADAPTER)
    writer.add_string(Keys.Adapter.TYPE, "lora")
    writer.add_float32(Keys.Adapter.LORA_ALPHA, 0.0)  # the scale is folded into lora_b
    for name, (lora_a, lora_b) in tensors.items():
        writer.add_tensor(name + ".lora_a", lora_a.numpy())
        writer.add_tensor(name + ".lora_b", lora_b.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out)
    return out
