"""ONNX Runtime vs eager PyTorch for the S1 encoders on CPU, in one run.

Exports a random-weight model with :func:`opencir.models.onnx_export.export_onnx`, checks
that both backends give the same embeddings, then times the query encoder, the target
encoder and a float32 matmul of each library round-robin at the same thread count and
reports medians of per-round ratios (ONNX Runtime time ÷ PyTorch time; below 1 means ONNX
Runtime is faster).

    python benchmarks/encoder_onnx.py                      # ViT-B/16, batch 4
    python benchmarks/encoder_onnx.py --model instructcir-tiny --rounds 3
"""

from __future__ import annotations

import os

# Before torch loads OpenMP (see encoder_cpu.py); ONNX Runtime's own pool is told the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import interleaved_times, machine_report, matmul_gflops_fn, median_ratio

import opencir
from opencir.models.onnx_export import OnnxRetriever

TEXT = "make the dog red and put it on a sunny beach"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="instructcir-vit-b-16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def ort_matmul(size: int, threads: int) -> tuple:
    """A float32 matmul through ONNX Runtime (its own GEMM), for the library-vs-library view."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size, size]) for n in "ab"]
    output = helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])
    graph = helper.make_graph([node], "matmul", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options)
    feeds = {n: np.random.rand(size, size).astype(np.float32) for n in "ab"}
    return lambda: session.run(None, feeds)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = opencir.create_model(args.model).eval()
    size = model.config.backbone.preprocess.size
    pixels = torch.randn(args.batch, 3, size, size)
    texts = [TEXT] * args.batch
    with tempfile.TemporaryDirectory() as directory:
        onnx_model = OnnxRetriever(model, directory)
        gap = (onnx_model.encode_query(pixels, texts) - model.encode_query(pixels, texts)).abs()
        torch_matmul, matmul_flops = matmul_gflops_fn(args.matmul_size)
        calls = {
            "torch_query": lambda: model.encode_query(pixels, texts),
            "onnx_query": lambda: onnx_model.encode_query(pixels, texts),
            "torch_target": lambda: model.encode_target(pixels),
            "onnx_target": lambda: onnx_model.encode_target(pixels),
            "torch_matmul": torch_matmul,
            "onnx_matmul": ort_matmul(args.matmul_size, torch.get_num_threads()),
        }
        times = interleaved_times(calls, rounds=args.rounds)
    print(machine_report())
    print(f"model {args.model} (random weights), batch {args.batch}, {args.rounds} rounds")
    print(f"max |embedding difference| onnx vs torch: {gap.max().item():.2e}")
    for name, values in times.items():
        print(f"  {name:13s} {statistics.median(values) * 1e3:9.1f} ms")
    for part in ("query", "target", "matmul"):
        ratio = median_ratio(times[f"onnx_{part}"], times[f"torch_{part}"])
        print(f"time onnx / torch, {part:7s}  {ratio:.3f}")
    rate = matmul_flops / statistics.median(times["torch_matmul"]) / 1e9
    print(f"torch float32 matmul {args.matmul_size}^2: {rate:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
