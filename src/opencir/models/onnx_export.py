"""An optional ONNX Runtime backend for a model's two encoders on CPU.

``pip install 'opencir[onnx]'``. :func:`export_onnx` writes ``query.onnx`` and
``target.onnx`` (the EMA target's null text is folded into the graph as a constant);
:class:`OnnxRetriever` runs them behind the same ``encode_query`` / ``encode_target`` API as
the PyTorch model, using the model's own preprocessing and tokenizer, so evaluation, indexing
and serving take it unchanged. :func:`with_backend` is the switch an entry point exposes as a
flag (``backend="onnx"``). Nothing here is imported by ``opencir`` itself.

Why it exists: on the CPU in ``docs/PERFORMANCE.md`` ONNX Runtime's kernels ran the S1 encoders
faster than eager PyTorch at the same thread count (the figure and the command are there).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from opencir.models.base import CIRModel, ImagesLike

BACKENDS = ("torch", "onnx")
QUERY_FILE, TARGET_FILE = "query.onnx", "target.onnx"


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "the ONNX backend needs onnxruntime and onnx: pip install 'opencir[onnx]'"
        ) from None
    return onnxruntime


class _QueryGraph(nn.Module):
    def __init__(self, model: CIRModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        tokens = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.model.forward_query(pixels, tokens)


class _TargetGraph(nn.Module):
    def __init__(self, model: CIRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_target(pixels)


def _sample_inputs(model: CIRModel) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    size = model.config.backbone.preprocess.size
    tokens = model.text_tokenizer()(["a sample instruction", "another one"])
    return torch.zeros(2, 3, size, size), tokens


def export_onnx(model: CIRModel, directory: str | Path, opset: int = 17) -> dict[str, Path]:
    """Write the query and target encoders of a CPU model as ONNX graphs; return their paths.

    Batch size and text length stay dynamic. The weights are those of ``model`` now: export
    again after changing them.
    """
    if model.device.type != "cpu":
        raise ValueError(f"export_onnx needs a model on the CPU, got one on {model.device}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pixels, tokens = _sample_inputs(model)
    paths = {"query": directory / QUERY_FILE, "target": directory / TARGET_FILE}
    batch = {0: "batch"}
    text = {0: "batch", 1: "length"}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-level shape checks
            _export(
                _QueryGraph(model),
                (pixels, tokens["input_ids"], tokens["attention_mask"]),
                paths["query"],
                {"pixels": batch, "input_ids": text, "attention_mask": text},
                opset,
            )
            _export(_TargetGraph(model), (pixels,), paths["target"], {"pixels": batch}, opset)
    finally:
        model.train(was_training)
    return paths


def _export(
    graph: nn.Module, args: tuple, path: Path, axes: dict[str, dict[int, str]], opset: int
) -> None:
    torch.onnx.export(
        graph,
        args,
        str(path),
        input_names=list(axes),
        output_names=["embedding"],
        dynamic_axes={**axes, "embedding": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )


class OnnxRetriever:
    """A model's encoders through ONNX Runtime; same API and outputs as the model itself.

    ``threads``: ONNX Runtime intra-op threads (default: PyTorch's thread count).
    ``spin_wait``: let idle worker threads spin; off by default because on a CPU shared with
    other processes a spinning thread takes the time slice its peer needs.
    """

    def __init__(
        self,
        model: CIRModel,
        directory: str | Path | None = None,
        threads: int | None = None,
        spin_wait: bool = False,
    ) -> None:
        ort = _onnxruntime()
        self.model = model
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="opencir-onnx-")
        paths = export_onnx(model, directory or self._tmp.name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spin_wait)))
        self.sessions = {
            name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in paths.items()
        }

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        arrays = {key: value.cpu().numpy() for key, value in feeds.items()}
        out = torch.from_numpy(self.sessions[name].run(None, arrays)[0])
        return F.normalize(out.float(), dim=-1)  # already unit length; guards float rounding

    def encode_query(self, images: ImagesLike, texts: Sequence[str]) -> torch.Tensor:
        """Composed-query embeddings ``[B, D]``, L2-normalised (as ``CIRModel.encode_query``)."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of str (one per query), not a single str")
        pixels = self.model.pixels(images)
        if len(texts) != pixels.shape[0]:
            raise ValueError(f"got {pixels.shape[0]} images but {len(texts)} texts")
        tokens = self.model.text_tokenizer()(texts)
        return self._run("query", {"pixels": pixels, **tokens})

    def encode_target(self, images: ImagesLike) -> torch.Tensor:
        """Gallery (target) image embeddings ``[B, D]``, L2-normalised."""
        return self._run("target", {"pixels": self.model.pixels(images)})

    def fingerprint(self) -> str:
        """The model's fingerprint, marked: embeddings agree with it up to float rounding."""
        return f"{self.model.fingerprint()}-onnx"


def with_backend(model: CIRModel, backend: str = "torch", **options: Any) -> Any:
    """``model`` itself for ``"torch"``, or an :class:`OnnxRetriever` around it for ``"onnx"``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown encoder backend {backend!r}; expected one of {BACKENDS}")
    return model if backend == "torch" else OnnxRetriever(model, **options)


__all__ = ["BACKENDS", "OnnxRetriever", "export_onnx", "with_backend"]
