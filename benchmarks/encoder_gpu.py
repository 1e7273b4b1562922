"""Images/s of the ViT-L/14 S1 encoders on one CUDA GPU in bf16, and the fraction of peak.

Random weights (the cost of a forward does not depend on them). For the S1 query encoder
(image + instruction), the EMA target encoder (image + cached null text) and the plain
backbone image encoder it prints images/s, achieved TFLOP/s (FLOPs counted by
``torch.utils.flop_counter``), and that as a fraction of (a) the card's datasheet dense
bf16 peak and (b) a large bf16 matmul timed in the same process. Exits with a message
when no CUDA device is present.

    python benchmarks/encoder_gpu.py                       # ViT-L/14, batch 64, autocast
    python benchmarks/encoder_gpu.py --batch 128 --weights-bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import flop_counter, interleaved_times, machine_report

import opencir

NO_CUDA = (
    "encoder_gpu.py: no CUDA device is available (torch.cuda.is_available() is False); "
    "run it on a machine with an NVIDIA GPU and a CUDA build of PyTorch."
)
TEXT = "make the dog red and put it on a sunny beach"

# Datasheet dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, matched by device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 756.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="instructcir-vit-l-14")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument(
        "--weights-bf16", action="store_true", help="cast weights to bf16 instead of autocast"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the datasheet")
    return parser.parse_args(argv)


def datasheet_peak(name: str) -> float | None:
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


def encoder_calls(model: torch.nn.Module, batch: int) -> dict[str, Callable[[], object]]:
    size = model.config.backbone.preprocess.size
    pixels = torch.randn(batch, 3, size, size, device="cuda")
    tokens = model.tokenize([TEXT] * batch)
    return {
        "query": lambda: model.forward_query(pixels, tokens),
        "target": lambda: model.forward_target(pixels),
        "plain": lambda: model.query_encoder.tower.encode_image(pixels),
    }


def bf16_matmul(size: int) -> tuple[Callable[[], object], float]:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    return (lambda: a @ b), 2.0 * size**3


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit(NO_CUDA)
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or datasheet_peak(name)
    model = opencir.create_model(args.model).eval().cuda()
    if args.weights_bf16:
        model = model.to(torch.bfloat16)
    calls = encoder_calls(model, args.batch)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        flops = {}
        for key, fn in calls.items():
            with flop_counter() as counter:
                fn()
            flops[key] = float(counter.get_total_flops())
        matmul, matmul_flops = bf16_matmul(args.matmul_size)
        times = interleaved_times({**calls, "matmul": matmul}, rounds=args.rounds, warmup=2)
    print(machine_report())
    print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    mode = "weights" if args.weights_bf16 else "autocast"
    print(f"model {args.model} (random weights), batch {args.batch}, bf16 {mode}, ", end="")
    print(f"{args.rounds} rounds (medians)")
    matmul_tflops = matmul_flops / statistics.median(times["matmul"]) / 1e12
    shown = peak if peak else "unknown (pass --peak-tflops)"
    print(f"bf16 matmul {args.matmul_size}^2: {matmul_tflops:.0f} TFLOP/s; datasheet peak {shown}")
    for key in calls:
        seconds = statistics.median(times[key])
        tflops = flops[key] / seconds / 1e12
        of_peak = f"{tflops / peak:.3f}" if peak else "n/a"
        print(
            f"  {key:6s} {args.batch / seconds:8.1f} images/s  {tflops:6.1f} TFLOP/s  "
            f"of peak {of_peak}  of matmul {tflops / matmul_tflops:.3f}"
        )


if __name__ == "__main__":
    main()
