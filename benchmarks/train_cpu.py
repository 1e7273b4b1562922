"""The trainer's real S1 step on CPU: forward, forward + backward, optimizer + EMA, in one run.

Builds :class:`opencir.train.loop.Trainer` from ``recipes/miniature/s1.yaml`` (reference
negatives, EMA target), pinned to the settings docs/PERFORMANCE.md measured (whole text tower
frozen, EMA momentum 0.99, no mined negatives), with a random-weight model, and feeds it a
synthetic batch, so the data pipeline is not part of the figures. Each round times, on the
same batch:

* ``forward``: the step module's forward and the loss, autograd on, nothing kept;
* ``micro``: ``Trainer._backward`` on the one batch (forward, loss, backward);
* ``optim``: ``Trainer._optimizer_step`` (grad clipping, AdamW, scheduler, zero_grad, EMA).

and reports medians of per-round ratios: optimizer + EMA ÷ step (goal ≤ 0.03) and
step ÷ (forward × the FLOP-ideal multiple) (goal ≤ 1.15). The ideal multiple is the FLOPs
autograd executes for the step (forward + backward, counted by ``torch.utils.flop_counter``)
÷ the forward's FLOPs: frozen parts and the no-grad EMA targets contribute their forward only.

    python benchmarks/train_cpu.py                                   # ViT-B/16, batch 8
    python benchmarks/train_cpu.py --model instructcir-tiny --batch 32 --rounds 5
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
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import flop_counter, machine_report, time_once

from opencir.train.config import load_recipe
from opencir.train.loop import Trainer

ROOT = Path(__file__).resolve().parent.parent
TEXT = "make the dog red and put it on a sunny beach"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="instructcir-vit-b-16")
    parser.add_argument("--recipe", default=str(ROOT / "recipes/miniature/s1.yaml"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], help="extra recipe overrides key=value")
    return parser.parse_args(argv)


def build_trainer(args: argparse.Namespace, out_dir: str) -> Trainer:
    overrides = [
        f"model={args.model}",
        "pretrained=null",
        f"out_dir={out_dir}",
        f"batch_size={args.batch}",
        "device=cpu",
        "tensorboard=false",
        "freeze=[text_model]",
        "hard_negatives=0",
        "model_overrides={ema_momentum: 0.99}",
        *args.set,
    ]
    return Trainer(load_recipe(args.recipe, overrides))


def synthetic_batch(trainer: Trainer, batch: int) -> dict[str, Any]:
    size = trainer.model.config.backbone.preprocess.size
    generator = torch.Generator().manual_seed(0)
    return {
        "reference": torch.randn(batch, 3, size, size, generator=generator),
        "target": torch.randn(batch, 3, size, size, generator=generator),
        "tokens": trainer.model.text_tokenizer()([TEXT] * batch),
    }


def forward_only(trainer: Trainer, batch: dict[str, Any]) -> None:
    """The step's forward and loss with autograd recording, as in training; then dropped."""
    outputs = trainer.step_module(batch)
    trainer.task.loss(tuple(o.float() for o in outputs), trainer.ctx)


def count_flops(trainer: Trainer, batch: dict[str, Any]) -> tuple[float, float]:
    """FLOPs of the forward alone and of the micro step (forward + backward)."""
    with flop_counter() as counter:
        forward_only(trainer, batch)
    forward = float(counter.get_total_flops())
    with flop_counter() as counter:
        trainer._backward([batch])
    trainer.optimizer.zero_grad(set_to_none=True)
    return forward, float(counter.get_total_flops())


def time_rounds(trainer: Trainer, batch: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"forward": [], "micro": [], "optim": []}
    for index in range(rounds + 1):  # the first round warms up and is dropped
        forward = time_once(lambda: forward_only(trainer, batch))
        micro = time_once(lambda: trainer._backward([batch]))
        optim = time_once(trainer._optimizer_step)
        if index:
            for name, value in zip(times, (forward, micro, optim), strict=True):
                times[name].append(value)
    return times


def report(times: dict[str, list[float]], flops: tuple[float, float], params: int) -> None:
    forward_flops, step_flops = flops
    ideal = step_flops / forward_flops
    for name, values in times.items():
        print(f"  {name:8s} {statistics.median(values):8.3f} s")
    steps = [m + o for m, o in zip(times["micro"], times["optim"], strict=True)]
    optim_share = statistics.median(o / s for o, s in zip(times["optim"], steps, strict=True))
    print(f"trainable parameters              {params / 1e6:.1f} M")
    print(f"GFLOP forward {forward_flops / 1e9:.1f}, forward+backward {step_flops / 1e9:.1f}")
    print(f"FLOP-ideal multiple (step/forward) {ideal:.3f}")
    print(f"(optimizer + EMA) / step          {optim_share:.4f}   goal <= 0.03")
    for label, numerators in (("step", steps), ("fwd+bwd", times["micro"])):
        ratio = statistics.median(
            n / (f * ideal) for n, f in zip(numerators, times["forward"], strict=True)
        )
        print(f"{label:8s} / (forward x ideal)      {ratio:.3f}   goal <= 1.15")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = build_trainer(args, out_dir)
        batch = synthetic_batch(trainer, args.batch)
        print(machine_report())
        print(f"model {args.model} (random weights), recipe {Path(args.recipe).name}, ", end="")
        print(f"batch {args.batch}, {args.rounds} rounds (medians)")
        flops = count_flops(trainer, batch)
        times = time_rounds(trainer, batch, args.rounds)
        report(times, flops, sum(p.numel() for p in trainer.params))


if __name__ == "__main__":
    main()
