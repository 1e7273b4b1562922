"""An ensemble of OpenCIR models evaluated as one: the mean of their cosine similarities.

Each member embeds the queries and the gallery on its own; the ensemble's embedding is the
members' L2-normalised embeddings side by side, divided by the square root of their number,
so its dot product is the mean of the members' cosine similarities and the result is again
unit length — any evaluator, index or server that takes a model takes the ensemble.
Measures how much of a model's error is seed- or setting-specific noise that averaging
removes (docs/RESULTS.md, "Ensembles").

    .venv/bin/python recipes/miniature/ensemble.py CHECKPOINT CHECKPOINT [...] \\
        --data-root runs/headroom/world-a-held --split val --out FILE.json
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Sequence

import torch

from opencir.eval.run import EvalRequest, run_evaluation
from opencir.models import load_model
from opencir.models.base import ImagesLike, Retriever, retriever_fingerprint


class SimilarityEnsemble:
    """Members' normalised embeddings concatenated and scaled by ``1/sqrt(len(members))``."""

    def __init__(self, members: Sequence[Retriever]) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        self.members = list(members)

    def _join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        parts = [torch.nn.functional.normalize(p.float(), dim=-1) for p in parts]
        return torch.cat(parts, dim=-1) / len(parts) ** 0.5

    def encode_query(self, images: ImagesLike, texts: Sequence[str]) -> torch.Tensor:
        return self._join([m.encode_query(images, texts) for m in self.members])

    def encode_target(self, images: ImagesLike) -> torch.Tensor:
        return self._join([m.encode_target(images) for m in self.members])

    def fingerprint(self) -> str:
        joined = "+".join(retriever_fingerprint(m) for m in self.members)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("members", nargs="+", help="checkpoint folders (two or more)")
    parser.add_argument("--benchmark", default="shapescir")
    parser.add_argument("--data-root", required=True, help="world folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", help="write the results JSON here (per-query hits, no rankings)")
    args = parser.parse_args()
    model = SimilarityEnsemble([load_model(m) for m in args.members])
    request = EvalRequest(
        args.benchmark, args.data_root, args.split, out=args.out, out_rankings=False
    )
    result, _ = run_evaluation(model, request)
    print(result.format_table())


if __name__ == "__main__":
    main()
