"""The search part of ``make demo``: index a gallery, run composed queries, serve the page.

``opencir.demo`` (the demo driver) calls :func:`run_search_demo` with the shipped checkpoint
and a miniature-world gallery; it works on any image folder or list as well.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencir.index.build import BuildConfig, build_index
from opencir.index.manifest import GalleryIndexError, read_manifest
from opencir.index.resolve import canonical_spec, resolve_model
from opencir.index.search import Searcher, SearchResult
from opencir.index.sources import ImageSource
from opencir.index.store import GalleryIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoQuery:
    """A composed query: ``reference`` is a gallery name or an image file; ``targets`` optional."""

    reference: str
    text: str
    targets: tuple[str, ...] = ()


def world_sources(root: str | Path, split: str | None = "test") -> Iterator[ImageSource]:
    """The images of a miniature world (``images.jsonl``), with alt texts as metadata."""
    root = Path(root)
    with (root / "images.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if split is None or row.get("split") == split:
                metadata = {"alt_text": row.get("alt_text", ""), "split": row.get("split", "")}
                yield ImageSource(row["id"], (root / row["file"]).resolve(), metadata)


def world_queries(root: str | Path, split: str = "test", n: int = 4) -> list[DemoQuery]:
    """The first ``n`` queries of a miniature world's ``queries.<split>.jsonl``."""
    queries = []
    with (Path(root) / f"queries.{split}.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            queries.append(DemoQuery(row["reference"], row["text"], tuple(row.get("targets", ()))))
            if len(queries) == n:
                break
    return queries


def _model_and_spec(model: Any, workdir: Path) -> tuple[Any, str]:
    """A spec the index can record (so ``opencir serve`` reloads the same weights)."""
    if isinstance(model, str | Path):
        spec = str(model)
        resolved = resolve_model(spec)
        if "@" in spec or Path(spec).expanduser().is_dir():
            return resolved, canonical_spec(spec)
        model = resolved  # a bare registered name: weights are not reproducible, keep them
    directory = workdir / "model"
    model.save(directory)
    return model, str(directory.resolve())


def _ensure_index(model: Any, spec: str, images: Any, out: Path, progress: bool) -> None:
    """Reuse an index built by this very model; otherwise (re)build it."""
    from opencir.models.base import retriever_fingerprint

    try:
        if read_manifest(out).model.fingerprint == retriever_fingerprint(model):
            log.info("reusing the index at %s", out)
            return
    except GalleryIndexError:
        pass
    build_index(model, images, out, BuildConfig(overwrite=True, progress=progress), spec)


def _format(query: DemoQuery, result: SearchResult) -> str:
    lines = [f"[{query.reference}] + {query.text!r}"]
    for hit in result.hits:
        mark = "  <- target" if hit.item.name in query.targets else ""
        caption = hit.item.metadata.get("alt_text", "")
        lines.append(f"  {hit.rank:>2}. {hit.score:.3f}  {hit.item.name}  {caption}{mark}"[:150])
    if query.targets:
        ranks = [h.rank for h in result.hits if h.item.name in query.targets]
        lines.append(f"  target rank: {ranks[0] if ranks else f'not in top {result.k}'}")
    return "\n".join(lines)


def _run_query(searcher: Searcher, query: DemoQuery, k: int) -> SearchResult:
    path = Path(query.reference)
    if path.is_file():
        from opencir.data.images import load_image

        return searcher.search(query.text, image=load_image(path), k=k)
    reference = searcher.index.find(query.reference)
    return searcher.search(query.text, reference_id=reference.id, k=k)


def run_search_demo(
    model: Any,
    images: str | Path | Iterable[ImageSource],
    queries: Sequence[DemoQuery | tuple[str, str]],
    workdir: str | Path,
    serve: bool = True,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    k: int = 5,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> int:
    """Index ``images`` with ``model``, print the results of ``queries``, optionally serve.

    ``model``: a checkpoint folder / ``NAME@DIR`` / name, or a model object (saved under
    ``workdir/model`` so the index can name it). ``images``: a folder, a ``.txt``/``.jsonl``
    list, a miniature-world root, or :class:`ImageSource` records. With ``serve`` the page
    runs on ``host:port`` (another free port if that one is taken) until Ctrl-C.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model, spec = _model_and_spec(model, workdir)
    if isinstance(images, str | Path) and (Path(images) / "images.jsonl").is_file():
        images = world_sources(images)
    out = workdir / "index"
    _ensure_index(model, spec, images, out, progress)
    searcher = Searcher(GalleryIndex.open(out), model)
    searcher.index.check_model(model, spec)
    echo(f"index: {len(searcher.index)} images at {out}")
    for query in (q if isinstance(q, DemoQuery) else DemoQuery(*q) for q in queries):
        echo(_format(query, _run_query(searcher, query, k)))
    if serve:
        _serve(searcher, host, port, echo)
    searcher.close()
    return 0


def _serve(searcher: Searcher, host: str, port: int, echo: Callable[[str], None]) -> None:
    from opencir.serve.app import ServeConfig, create_app
    from opencir.serve.runner import bind, serve_socket, url_of

    try:
        sock = bind(host, port)
    except OSError as error:
        log.warning("%s; using a free port instead", error)
        sock = bind(host, 0)
    echo(f"search page: {url_of(sock)}/  (API docs at {url_of(sock)}/docs; Ctrl-C to stop)")
    config = ServeConfig(index=str(searcher.index.folder), host=host)  # host: allowed Host
    serve_socket(create_app(config, searcher), sock)


def run_world_search_demo(
    model: Any,
    workdir: str | Path,
    serve: bool = True,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    world_root: str | Path | None = None,
    n_images: int = 300,
    n_queries: int = 4,
    echo: Callable[[str], None] = print,
) -> int:
    """:func:`run_search_demo` on the test side of a ShapesCIR world (made if missing)."""
    from opencir.data.worlds.shapes import generate_shapes_world

    workdir = Path(workdir)
    root = Path(world_root) if world_root else workdir / "shapes-world"
    if not (root / "images.jsonl").is_file():
        generate_shapes_world(
            root, n_train=0, n_test=n_images, n_queries=n_queries, n_val_queries=0, progress=False
        )
    queries = world_queries(root, "test", n_queries)
    return run_search_demo(model, root, queries, workdir, serve, host, port, echo=echo)
