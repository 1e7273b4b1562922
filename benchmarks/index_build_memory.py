"""Peak resident memory of ``build_index`` against the size of the embedding matrix it writes.

Each gallery size is built in a fresh child process running the real
``opencir.index.build_index``: the frozen listing, the thread pool decoding images, per-shard
embedding files, the assembly of items/embeddings/int8 codes/FAISS file and the atomic swap.
Two things are stand-ins, because encoding a million real photos on a CPU takes days:

* the images: every record points at the same 8x8 PNG (still opened and decoded per record);
* the model: ``StandInEncoder.encode_target`` returns seeded random vectors instead of
  running a network.

The child reports its peak resident set (``VmHWM``) and its resident set after imports,
before building; the parent prints them next to the ``N x dim`` float32 matrix size.

    python benchmarks/index_build_memory.py                      # 100k, 300k, 1M x 512, Flat
    python benchmarks/index_build_memory.py --sizes 50000 --factory IVF256,SQ8
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_model

MIB = 2**20


class StandInEncoder:
    """Returns seeded random vectors for any images: the cost of a model without its work."""

    def __init__(self, dim: int) -> None:
        self.embed_dim = dim
        self._rng = np.random.default_rng(0)

    def encode_target(self, images: Sequence[Any]) -> np.ndarray:
        return self._rng.standard_normal((len(images), self.embed_dim), dtype=np.float32)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--shard-size", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def resident_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def records(n: int, image: Path) -> Iterator[Any]:
    from opencir.index import ImageSource

    for i in range(n):
        yield ImageSource(f"img{i:08d}.png", image, {})


def child(args: argparse.Namespace) -> None:
    """Build one index and print the measurements as JSON (runs in a fresh process)."""
    import faiss  # noqa: F401  (imported before the baseline: the build needs both anyway)
    import torch  # noqa: F401
    from PIL import Image

    from opencir.index import BuildConfig, build_index

    work = args.dir
    image = work / "tiny.png"
    Image.new("RGB", (8, 8), (10, 20, 30)).save(image)
    config = BuildConfig(
        factory=args.factory, shard_size=args.shard_size, workers=4, progress=False
    )
    before = resident_mib("VmRSS")
    started = time.perf_counter()
    build_index(StandInEncoder(args.dim), records(args.child, image), work / "index", config)
    seconds = time.perf_counter() - started
    files = {p.name: p.stat().st_size for p in (work / "index").iterdir()}
    result = {"n": args.child, "before": before, "peak": resident_mib("VmHWM"), "seconds": seconds}
    print(json.dumps({**result, "files": files}))


def run_child(n: int, args: argparse.Namespace, work: Path) -> dict:
    folder = work / f"build-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    command = [sys.executable, __file__, "--child", str(n), "--dir", str(folder)]
    command += ["--dim", str(args.dim), "--factory", args.factory]
    command += ["--shard-size", str(args.shard_size)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    shutil.rmtree(folder, ignore_errors=True)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    args = parse_args()
    if args.child is not None:
        child(args)
        return
    print(f"CPU model: {cpu_model()}; factory {args.factory}, shard size {args.shard_size}")
    work = args.dir or Path(tempfile.mkdtemp(prefix="opencir-build-"))
    for n in args.sizes:
        r = run_child(n, args, work)
        matrix = n * args.dim * 4 / MIB
        print(
            f"n={n:8d}  matrix {matrix:7.0f} MiB  peak RSS {r['peak']:6.0f} MiB "
            f"(after imports {r['before']:4.0f} MiB, build adds {r['peak'] - r['before']:5.0f} "
            f"MiB = {(r['peak'] - r['before']) / matrix:.3f} x matrix)  {r['seconds']:6.0f} s  "
            f"files {sum(r['files'].values()) / MIB:6.0f} MiB"
        )
    if args.dir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
