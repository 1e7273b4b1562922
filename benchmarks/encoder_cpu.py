"""S1 query encoder vs the plain backbone image encoder vs a large matmul, on CPU, in one run.

Random weights (no download): the cost of a forward pass does not depend on the weights.
Reports, as medians of per-round ratios of interleaved timings:

* time(query encoder) ÷ time(plain image encoder), against their FLOP ratio
  (FLOPs counted by ``torch.utils.flop_counter``): the goal is ≤ 1.1 × the FLOP ratio,
  i.e. the cross-attention and the text tower cost what their FLOPs cost;
* GFLOP/s of each encoder ÷ GFLOP/s of a float32 matmul in the same process (goal ≥ 0.8),
  through PyTorch's default BLAS and through oneDNN (the faster of the two on some CPUs);
* our plain image path vs Hugging Face's own ``get_image_features`` (same weights).

    python benchmarks/encoder_cpu.py                       # ViT-B/16, batch 4
    python benchmarks/encoder_cpu.py --model instructcir-tiny --rounds 3
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: on a CPU shared with other processes, threads that spin at the
# end of every parallel region steal the time slices of the peer they wait for. Sleeping
# instead made memory-bound ops (a fused AdamW step, a copy) 7-14x faster on the shared
# 2-core machine of docs/PERFORMANCE.md. Set OMP_WAIT_POLICY=ACTIVE to compare.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    flop_counter,
    interleaved_times,
    load_average,
    machine_report,
    matmul_gflops_fn,
    median_ratio,
    onednn_matmul_fn,
)

import opencir

TEXT = "make the dog red and put it on a sunny beach"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="instructcir-vit-b-16", help="registered S1 model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def count_flops(fn: Callable[[], object]) -> float:
    with torch.inference_mode(), flop_counter() as counter:
        fn()
    return float(counter.get_total_flops())


def encoder_calls(model: torch.nn.Module, batch: int) -> dict[str, Callable[[], object]]:
    """The three encoders on one batch: S1 query, plain backbone, Hugging Face reference."""
    pixels = torch.randn(batch, 3, *(2 * [model.config.backbone.preprocess.size]))
    tokens = model.tokenize([TEXT] * batch)
    encoder, tower = model.query_encoder, model.query_encoder.tower
    return {
        "query": lambda: encoder(pixels, tokens["input_ids"], tokens["attention_mask"]),
        "plain": lambda: tower.encode_image(pixels),
        "hf_plain": lambda: tower.hf.get_image_features(pixel_values=pixels),
        "target": lambda: model.forward_target(pixels),
    }


def report(times: dict[str, list[float]], flops: dict[str, float]) -> None:
    for name, values in times.items():
        rate = flops[name] / statistics.median(values) / 1e9
        print(f"  {name:9s} {statistics.median(values) * 1e3:9.1f} ms   {rate:7.1f} GFLOP/s")
    flop_ratio = flops["query"] / flops["plain"]
    time_ratio = median_ratio(times["query"], times["plain"])
    print(f"FLOPs query / plain               {flop_ratio:.3f}")
    print(f"time  query / plain               {time_ratio:.3f}")
    print(f"(time ratio) / (FLOP ratio)       {time_ratio / flop_ratio:.3f}   goal <= 1.1")
    for reference in ("matmul", "onednn"):
        for name in ("plain", "query", "target"):
            per_round = statistics.median(
                (flops[name] / t) / (flops[reference] / m)
                for t, m in zip(times[name], times[reference], strict=True)
            )
            print(f"GFLOP/s {name:6s} / {reference:6s} GFLOP/s   {per_round:.3f}   goal >= 0.8")
    hf_ratio = median_ratio(times["plain"], times["hf_plain"])
    print(f"time  ours plain / HF plain       {hf_ratio:.3f}")
    print(f"load average (1 min) at the end   {load_average()}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = opencir.create_model(args.model).eval()
    calls = encoder_calls(model, args.batch)
    matmul, matmul_flops = matmul_gflops_fn(args.matmul_size)
    flops = {name: count_flops(fn) for name, fn in calls.items()}
    calls["matmul"], flops["matmul"] = matmul, matmul_flops
    calls["onednn"], flops["onednn"] = onednn_matmul_fn(args.matmul_size)
    print(machine_report())
    print(f"model {args.model} (random weights), batch {args.batch}, ", end="")
    print(f"matmul {args.matmul_size}^2 float32, {args.rounds} interleaved rounds (medians)")
    with torch.inference_mode():
        times = interleaved_times(calls, rounds=args.rounds)
    report(times, flops)


if __name__ == "__main__":
    main()
