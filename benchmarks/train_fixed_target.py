"""S1 training steps with a fixed target: the table of target embeddings vs encoding every batch.

Builds two :class:`opencir.train.loop.Trainer` from ``recipes/miniature/s1.yaml`` on the same
triplets — one with ``cache_fixed_targets: true`` (the default), one with ``false`` — and
times whole training steps as a run performs them: the next batch from the real data loader
(images read and preprocessed), the step module's forward, the loss, the backward and the
optimizer step. Rounds of ``--steps`` steps alternate between the two trainers, and the
reported figure is the median per-round ratio (cached ÷ encoded). The one-time cost of the
table (embedding every training image before the first step) is reported beside it.

    python benchmarks/train_fixed_target.py                  # makes a small ShapesCIR world
    python benchmarks/train_fixed_target.py --triplets runs/shapes-tiny/gt \\
        --pretrained runs/shapes-tiny/pretrain/backbone
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/train_cpu.py

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_report, median_ratio, time_once

from opencir.data.worlds import generate_shapes_world
from opencir.data.worlds.triplets import export_world_triplets
from opencir.train.config import load_recipe
from opencir.train.data import move_to
from opencir.train.loop import Trainer

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triplets", help="a triplets folder (default: a small world's GT)")
    parser.add_argument("--pretrained", help="backbone dir (default: random weights)")
    parser.add_argument("--model", default="instructcir-vit-mini-minilm")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--workers", type=int, default=1, help="data loader workers")
    return parser.parse_args(argv)


def small_world_triplets(folder: Path) -> Path:
    """Ground-truth triplets of a small ShapesCIR world (its train-side queries)."""
    world = folder / "world"
    generate_shapes_world(world, n_train=6000, n_test=300, n_queries=20, n_val_queries=20,
                          n_train_queries=1000, progress=False)  # fmt: skip
    export_world_triplets(world, "train", folder / "gt")
    return folder / "gt"


def build_trainer(args: argparse.Namespace, triplets: Path, out_dir: Path, cache: bool) -> Trainer:
    overrides = [
        f"model={args.model}",
        f"pretrained={args.pretrained or 'null'}",
        f"out_dir={out_dir}",
        f"data.triplets=[{triplets}]",
        f"data.workers={args.workers}",
        f"cache_fixed_targets={str(cache).lower()}",
        "device=cpu",
        "tensorboard=false",
    ]
    return Trainer(load_recipe(str(ROOT / "recipes/miniature/s1.yaml"), overrides))


def prepared(trainer: Trainer) -> tuple[Iterator[dict[str, Any]], float]:
    """The trainer's data loader, and the seconds its preparation took (table, mining)."""
    started = time.perf_counter()
    batches = trainer._loader()
    return batches, time.perf_counter() - started


def steps(trainer: Trainer, batches: Iterator[dict[str, Any]], count: int) -> None:
    for _ in range(count):
        trainer._backward([move_to(next(batches), trainer.device)])
        trainer._optimizer_step()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        triplets = Path(args.triplets) if args.triplets else small_world_triplets(Path(tmp))
        trainers = {
            name: build_trainer(args, triplets, Path(tmp) / name, cache)
            for name, cache in (("cached", True), ("encoded", False))
        }
        # the encoded run mines first, so both runs read the same negatives' file afterwards
        loaders, setup = {}, {}
        for name in ("encoded", "cached"):
            loaders[name], setup[name] = prepared(trainers[name])
        print(machine_report())
        print(f"model {args.model} ({args.pretrained or 'random weights'}), triplets {triplets}")
        print(f"{args.rounds} rounds of {args.steps} steps each (medians; batch 32, 4 hard "
              "negatives, reference negatives)")  # fmt: skip
        times: dict[str, list[float]] = {"cached": [], "encoded": []}
        for index in range(args.rounds + 1):  # the first round warms up and is dropped
            for name, trainer in trainers.items():
                took = time_once(lambda t=trainer, n=name: steps(t, loaders[n], args.steps))
                if index:
                    times[name].append(took)
        for name, values in times.items():
            print(f"  {name:8s} {statistics.median(values) / args.steps:.3f} s/step")
        ratio = median_ratio(times["cached"], times["encoded"])
        print(f"preparation: cached {setup['cached']:.1f} s (table), "
              f"encoded {setup['encoded']:.1f} s (mining)")  # fmt: skip
        print(f"step time cached / encoded        {ratio:.3f}")


if __name__ == "__main__":
    main()
