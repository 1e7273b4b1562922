"""The data model every benchmark adapter produces and the evaluator consumes.

An adapter turns a dataset on disk (official layout or a miniature world) into one
:class:`BenchmarkSplit`: a gallery of image keys, a list of :class:`CIRQuery` and the
protocol switches it used. Ranking and metrics live in :mod:`opencir.eval.metrics`;
adapters never rank anything themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class CIRQuery:
    """One composed query.

    ``reference`` and every entry of ``targets``/``subset``/``gallery`` are image keys of the
    split (strings). ``targets`` is empty for test splits whose ground truth is hidden.
    ``subset`` is CIRR's 6-member group (Recall_subset); ``gallery`` is a per-query gallery
    (GeneCIS); both are ``None`` when the benchmark has no such notion.
    """

    id: str
    reference: str
    text: str
    targets: tuple[str, ...] = ()
    subset: tuple[str, ...] | None = None
    gallery: tuple[str, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkSplit:
    """A benchmark split ready to evaluate.

    ``load_image(key)`` returns an RGB PIL image (cropped where the protocol says so).
    ``protocol`` records every switch that changes the numbers (reference kept or removed,
    caption joining, query template, ...): reports print it verbatim.
    ``ks`` are the cut-offs reported for this benchmark; ``metrics`` names the families to
    compute (any of ``"recall"``, ``"recall_subset"``, ``"map"``).
    ``recall_first_target``: ``R@K`` counts a hit on each query's first target only (CIRCO's
    official recall); recall on any ground truth is then reported as ``R_anyGT@K``.
    ``gallery_files`` determine the gallery images (e.g. CIRCO's image list): the gallery
    embedding cache is keyed by them and the gallery keys, so splits sharing one gallery
    (CIRCO val and test) share the cache. Empty: ``fingerprint_files`` are used instead.
    """

    benchmark: str
    split: str
    gallery: Sequence[str]
    queries: Sequence[CIRQuery]
    load_image: Callable[[str], Image.Image]
    protocol: dict[str, Any]
    ks: tuple[int, ...] = (1, 5, 10, 50)
    metrics: tuple[str, ...] = ("recall",)
    subset_ks: tuple[int, ...] = (1, 2, 3)
    exclude_reference: bool = False
    group: Callable[[CIRQuery], str] | None = None
    fingerprint_files: Sequence[str] = ()
    recall_first_target: bool = False
    gallery_files: Sequence[str] = ()
