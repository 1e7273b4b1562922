"""Build, extend and shrink an index folder.

Building streams the gallery in shards: the image listing is frozen once into a work folder
beside the output (``.NAME.partial``), each shard's embeddings are written atomically as they
finish, and a re-run of the same command skips finished shards, so an interrupted build
resumes where it stopped. Memory stays bounded by one shard plus the final FAISS index.
The finished index is assembled in a temporary sibling and renamed into place.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from opencir.atomic import (
    atomic_open,
    atomic_write,
    exclusive_lock,
    fsync_tree,
    staging_dir,
    swap_in,
)
from opencir.data.images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from opencir.index.exact import column_scale, write_codes
from opencir.index.manifest import (
    EMBEDDINGS_FILE,
    ITEMS_FILE,
    MANIFEST_FILE,
    SKIPPED_FILE,
    VECTORS_FILE,
    GalleryIndexError,
    Manifest,
    ModelInfo,
)
from opencir.index.resolve import canonical_spec, names_random_weights, resolve_model
from opencir.index.sources import ImageSource, iter_sources
from opencir.index.store import GalleryIndex, iter_item_rows, write_items
from opencir.index.stream import NpyWriter, iter_npy_rows, write_flat_faiss

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
SOURCES_FILE = "sources.jsonl"
_ADD_CHUNK = 16_384  # rows copied, quantized or handed to FAISS at a time (32 MiB at 512-d)


@dataclass(frozen=True)
class BuildConfig:
    """How to embed and index a gallery."""

    factory: str = "Flat"
    search_params: str | None = None  # None: a sensible default for the factory
    batch_size: int = 32
    shard_size: int = 1024
    workers: int = 4
    train_size: int = 100_000
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shard_size < 1 or self.workers < 1:
            raise ValueError("batch_size, shard_size and workers must be at least 1")
        if self.train_size < 1:
            raise ValueError(f"train_size must be at least 1, got {self.train_size}")


def default_search_params(factory: str) -> str:
    """Search-time defaults: enough IVF lists / HNSW candidates for good recall."""
    params = []
    if "IVF" in factory:
        params.append("nprobe=16")
    if "HNSW" in factory:
        params.append("efSearch=64")
    return ",".join(params)


# --------------------------------------------------------------------------- public API


def build_index(
    model: Any,
    source: str | Path | Iterable[ImageSource],
    out: str | Path,
    config: BuildConfig = BuildConfig(),
    model_spec: str = "",
) -> Manifest:
    """Embed every image of ``source`` with ``model`` and write an index folder at ``out``."""
    out = Path(out).expanduser().resolve()
    info = _model_info(model, model_spec)
    _check_reopenable(info)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _writing(out):
        return _build(model, source, out, config, info)


def _build(model: Any, source: Any, out: Path, config: BuildConfig, info: ModelInfo) -> Manifest:
    if (out / MANIFEST_FILE).exists() and not config.overwrite:
        raise FileExistsError(
            f"index {out} already exists; add images with `opencir index add` or pass --overwrite"
        )
    if out.exists() and not (out / MANIFEST_FILE).exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not an index; refusing to replace it")
    _check_factory(config.factory, _embed_dim(model))
    plan = _plan("build", info, source, config, base=None)
    partial = _partial_dir(out, plan)
    _freeze_sources(partial, source, skip=lambda name: False)
    _embed_shards(partial, model, config)
    manifest = _assemble(out, partial, info, config, base=None, remove=())
    shutil.rmtree(partial, ignore_errors=True)
    return manifest


def add_images(
    index: str | Path,
    source: str | Path | Iterable[ImageSource],
    model: Any,
    config: BuildConfig = BuildConfig(),
) -> Manifest:
    """Embed the images of ``source`` not yet in ``index`` (by name) and add them."""
    folder = Path(index).expanduser().resolve()
    with _writing(folder):
        return _add(folder, source, model, config)


def _add(folder: Path, source: Any, model: Any, config: BuildConfig) -> Manifest:
    base = GalleryIndex.open(folder, mmap=True)
    try:
        base.check_model(model)
        plan = _plan("add", _model_info(model, base.manifest.model.spec), source, config, base)
        partial = _partial_dir(folder, plan)
        _freeze_sources(partial, source, skip=lambda n: base.items.find(n) is not None)
        _embed_shards(partial, model, config)
        manifest = _assemble(folder, partial, base.manifest.model, config, base=base, remove=())
    finally:
        base.close()
    shutil.rmtree(partial, ignore_errors=True)
    return manifest


def remove_images(
    index: str | Path,
    ids: Sequence[int] = (),
    names: Sequence[str] = (),
    missing_files: bool = False,
) -> Manifest:
    """Remove images by id, by name, or (``missing_files``) those whose file is gone."""
    folder = Path(index).expanduser().resolve()
    with _writing(folder):
        return _remove(folder, ids, names, missing_files)


def _remove(
    folder: Path, ids: Sequence[int], names: Sequence[str], missing_files: bool
) -> Manifest:
    base = GalleryIndex.open(folder, mmap=True)
    try:
        doomed = {base.get(i).id for i in ids} | {base.find(n).id for n in names}
        if missing_files:
            doomed |= {
                row[0] for row in iter_item_rows(folder / ITEMS_FILE) if not Path(row[2]).is_file()
            }
        if not doomed:
            log.info("nothing to remove from %s", folder)
            return base.manifest
        config = BuildConfig(
            factory=base.manifest.factory, search_params=base.manifest.search_params
        )
        return _assemble(folder, None, base.manifest.model, config, base=base, remove=doomed)
    finally:
        base.close()


def _writing(out: Path) -> Any:
    """The exclusive lock of index folder ``out``, held while anything writes it or beside it."""
    if not out.parent.is_dir():
        raise GalleryIndexError(f"no index at {out}: folder {out.parent} does not exist")
    lock = out.with_name(f".{out.name}.lock")
    return exclusive_lock(lock, f"another index build is writing to {out}; wait for it to end")


def _check_reopenable(info: ModelInfo) -> None:
    """Refuse a model its recorded spec cannot rebuild: no server could open the index.

    A bare registered name draws new random weights on every load. ``NAME@DIR`` loads the
    backbone, but a method with layers beyond it (InstructCIR, the combiner) starts those at
    random, so it is resolved once more and must give the same fingerprint.
    """
    spec = info.spec
    if spec and names_random_weights(spec):
        raise GalleryIndexError(
            f"model {spec!r} is a registered name without weights: it gets new random weights "
            f"on every load, so no server could open this index. {_SAVE_IT}"
        )
    if "@" in spec and _model_info(resolve_model(spec), spec).fingerprint != info.fingerprint:
        raise GalleryIndexError(
            f"model {spec!r} does not rebuild the model being indexed (a method's layers beyond "
            "the pretrained backbone start at random on every load), so no server could open "
            f"this index. {_SAVE_IT}"
        )


_SAVE_IT = (
    "Pass a checkpoint folder instead: train the model (opencir train) or save it "
    "(model.save(DIR)) and pass DIR"
)


# --------------------------------------------------------------------------- planning


def _embed_dim(model: Any) -> int:
    dim = getattr(model, "embed_dim", None)
    if isinstance(dim, int):
        return dim
    from PIL import Image

    return int(model.encode_target([Image.new("RGB", (32, 32))]).shape[-1])


def _model_info(model: Any, spec: str) -> ModelInfo:
    from opencir.models.base import retriever_fingerprint

    config = getattr(model, "config", None)
    return ModelInfo(
        spec=canonical_spec(spec) if spec else "",
        fingerprint=retriever_fingerprint(model),
        name=getattr(config, "name", type(model).__name__),
        method=getattr(config, "method", ""),
    )


def _check_factory(factory: str, dim: int) -> None:
    """Fail before any embedding work when FAISS cannot build ``factory`` for ``dim``."""
    import faiss

    try:
        faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise ValueError(
            f"FAISS cannot build index factory {factory!r} for {dim}-dim vectors: "
            f"{str(error).strip().splitlines()[-1]}"
        ) from error


def _plan(kind: str, info: ModelInfo, source: Any, config: BuildConfig, base: Any) -> dict:
    return {
        "kind": kind,
        "model": info.fingerprint,
        "source": str(Path(source).expanduser().resolve())
        if isinstance(source, str | Path)
        else "",
        "shard_size": config.shard_size,
        "max_pixels": config.max_pixels,
        "base": [base.manifest.updated, base.manifest.count] if base else None,
    }


def _partial_dir(out: Path, plan: dict) -> Path:
    """The resumable work folder beside ``out``; a stale one (other plan) is discarded."""
    partial = out.with_name(f".{out.name}.partial")
    plan_file = partial / PLAN_FILE
    if plan_file.is_file() and plan["source"]:
        if json.loads(plan_file.read_text()) == plan:
            log.info("resuming the interrupted build in %s", partial)
            return partial
        log.warning("discarding an unfinished build with other settings in %s", partial)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    atomic_write(plan_file, json.dumps(plan, indent=2).encode())
    return partial


def _freeze_sources(partial: Path, source: Any, skip: Callable[[str], bool]) -> int:
    """Write the listing of images to embed once; a resumed build reuses it unchanged."""
    listing = partial / SOURCES_FILE
    if listing.is_file():
        with listing.open() as handle:
            return sum(1 for _ in handle)
    records = iter_sources(source) if isinstance(source, str | Path) else iter(source)
    seen: set[str] = set()
    count = 0
    with atomic_open(listing, "w", encoding="utf-8") as handle:
        for record in records:
            if record.name in seen:
                raise GalleryIndexError(f"image name {record.name!r} appears twice in {source}")
            seen.add(record.name)
            if skip(record.name):
                continue
            row = {"name": record.name, "path": str(record.path), "metadata": dict(record.metadata)}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    log.info("%d images to embed", count)
    return count


def _iter_listing(partial: Path, shard_size: int) -> Iterator[tuple[int, list[ImageSource]]]:
    chunk: list[ImageSource] = []
    shard = 0
    with (partial / SOURCES_FILE).open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            chunk.append(ImageSource(row["name"], Path(row["path"]), row["metadata"]))
            if len(chunk) == shard_size:
                yield shard, chunk
                shard, chunk = shard + 1, []
    if chunk:
        yield shard, chunk


def _shard_path(partial: Path, shard: int) -> Path:
    return partial / f"shard-{shard:06d}.npz"


# --------------------------------------------------------------------------- embedding


def _embed_shards(partial: Path, model: Any, config: BuildConfig) -> None:
    with (partial / SOURCES_FILE).open() as handle:
        total = sum(1 for _ in handle)
    with (
        ThreadPoolExecutor(config.workers, thread_name_prefix="opencir-load") as pool,
        tqdm(total=total, unit="img", desc="embedding", disable=not config.progress) as bar,
    ):
        for shard, chunk in _iter_listing(partial, config.shard_size):
            path = _shard_path(partial, shard)
            if not path.is_file():
                _embed_shard(path, chunk, model, pool, config, bar)
            else:
                bar.update(len(chunk))


def _embed_shard(
    path: Path,
    chunk: list[ImageSource],
    model: Any,
    pool: ThreadPoolExecutor,
    config: BuildConfig,
    bar: tqdm,
) -> None:
    vectors: list[np.ndarray] = []
    reasons: list[str] = []
    for images, problems in _loaded_batches(pool, chunk, config):
        reasons.extend(problems)
        good = [image for image in images if image is not None]
        if good:
            vectors.append(_encode(model, good))
        bar.update(len(images))
    dim = vectors[0].shape[1] if vectors else 0
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    with atomic_open(path) as stream:
        np.savez(stream, vectors=matrix, reasons=np.array(reasons, dtype=str))


def _loaded_batches(
    pool: ThreadPoolExecutor, chunk: list[ImageSource], config: BuildConfig
) -> Iterator[tuple[list[Any], list[str]]]:
    """Decode batches in worker threads, one batch ahead of the model."""

    def submit(batch: list[ImageSource]) -> list[Future]:
        return [pool.submit(_load, record, config.max_pixels) for record in batch]

    batches = [chunk[i : i + config.batch_size] for i in range(0, len(chunk), config.batch_size)]
    pending = submit(batches[0]) if batches else []
    for index in range(len(batches)):
        current = pending
        pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
        results = [future.result() for future in current]
        yield (
            [r if not isinstance(r, str) else None for r in results],
            [r if isinstance(r, str) else "" for r in results],
        )


def _load(record: ImageSource, max_pixels: int) -> Any:
    """A PIL image, or the failure as ``"reason: detail"``."""
    try:
        return load_image(record.path, max_pixels=max_pixels)
    except ImageLoadError as error:
        log.warning("skipping %s: %s", record.path, error.detail)
        return f"{error.reason}: {error.detail}"


def _encode(model: Any, images: list[Any]) -> np.ndarray:
    vectors = model.encode_target(images)
    vectors = np.asarray(
        vectors.detach().cpu().float().numpy() if hasattr(vectors, "detach") else vectors,
        np.float32,
    )
    if not np.isfinite(vectors).all():
        raise GalleryIndexError("the model returned non-finite embeddings")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------- assembling


@dataclass(frozen=True)
class _NewRows:
    """What the finished shards contribute: counts known before any vector is copied."""

    partial: Path | None
    shard_size: int
    count: int
    skipped: int


def _count_new(partial: Path | None, shard_size: int) -> _NewRows:
    if partial is None:
        return _NewRows(None, shard_size, 0, 0)
    ok = skipped = 0
    for shard, _ in _iter_listing(partial, shard_size):
        with np.load(_shard_path(partial, shard)) as data:
            bad = int(sum(1 for r in data["reasons"] if r))
            ok += len(data["reasons"]) - bad
            skipped += bad
    return _NewRows(partial, shard_size, ok, skipped)


def _iter_new(new: _NewRows, start_id: int) -> Iterator[tuple[np.ndarray, list[tuple], list[dict]]]:
    """Per shard: vectors, item rows (with fresh ids) and skipped records."""
    if new.partial is None:
        return
    next_id = start_id
    for shard, chunk in _iter_listing(new.partial, new.shard_size):
        with np.load(_shard_path(new.partial, shard)) as data:
            vectors, reasons = data["vectors"], list(data["reasons"])
        rows, skipped = [], []
        for record, reason in zip(chunk, reasons, strict=True):
            if reason:
                skipped.append(
                    {"name": record.name, "path": str(record.path), "reason": str(reason)}
                )
                continue
            meta = json.dumps(dict(record.metadata), ensure_ascii=False)
            rows.append((next_id, record.name, str(record.path), meta))
            next_id += 1
        yield vectors, rows, skipped


def _assemble(
    out: Path,
    partial: Path | None,
    info: ModelInfo,
    config: BuildConfig,
    base: GalleryIndex | None,
    remove: set[int] | Sequence[int],
) -> Manifest:
    """Write the complete index into a temp sibling of ``out`` and swap it into place."""
    staging = staging_dir(out.parent, f".{out.name}.staging-")
    try:
        manifest = _write_index(staging, partial, info, config, base, set(remove))
        fsync_tree(staging)
        swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("index %s: %d images (%s)", out, manifest.count, manifest.factory)
    return manifest


def _write_index(
    staging: Path,
    partial: Path | None,
    info: ModelInfo,
    config: BuildConfig,
    base: GalleryIndex | None,
    remove: set[int],
) -> Manifest:
    new = _count_new(partial, config.shard_size)
    start_id = base.manifest.next_id if base else 0
    kept = _kept_rows(base, remove)
    dim = base.dim if base else _new_dim(partial, config.shard_size)
    total = len(kept) + new.count
    if total == 0:
        raise GalleryIndexError(
            "the index would be empty: "
            + ("every image would be removed" if base else "no readable images (see warnings)")
        )
    ids = np.empty(total, np.int64)
    peak = np.zeros(dim, np.float32)  # per-column max |value|, for the int8 codes
    with NpyWriter(staging / EMBEDDINGS_FILE, np.float32, (total, dim)) as writer:
        skipped = _copy_base(staging, base, kept, writer, ids, peak)
        row = len(kept)
        for vectors, rows, bad in _iter_new(new, start_id):
            if rows:
                writer.write(vectors)
                np.maximum(peak, np.abs(vectors).max(axis=0), out=peak)
                ids[row : row + len(rows)] = [r[0] for r in rows]
                write_items(staging / ITEMS_FILE, rows)
                row += len(rows)
            for added in rows:
                skipped.pop(added[1], None)
            skipped.update((record["name"], record) for record in bad)
    _write_skipped(staging / SKIPPED_FILE, list(skipped.values()))
    factory = base.manifest.factory if base else config.factory
    _write_vectors(staging, factory, base, config, ids, remove, len(kept), peak)
    next_id = start_id + new.count
    manifest = _manifest(info, config, base, dim, total, next_id, list(skipped.values()))
    manifest = manifest.with_files(staging)
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2))
    return manifest


def _new_dim(partial: Path | None, shard_size: int) -> int:
    if partial is not None:
        for shard, _ in _iter_listing(partial, shard_size):
            with np.load(_shard_path(partial, shard)) as data:
                if data["vectors"].shape[0]:
                    return int(data["vectors"].shape[1])
    raise GalleryIndexError("no readable images to index (see the warnings above)")


def _kept_rows(base: GalleryIndex | None, remove: set[int]) -> np.ndarray:
    """Row positions of the base embeddings that stay (rows are in id order)."""
    if base is None:
        return np.zeros(0, np.int64)
    ids = np.fromiter((r[0] for r in iter_item_rows(base.folder / ITEMS_FILE)), np.int64, len(base))
    return np.flatnonzero(~np.isin(ids, np.fromiter(remove, np.int64, len(remove))))


def _copy_base(
    staging: Path,
    base: GalleryIndex | None,
    kept: np.ndarray,
    writer: NpyWriter,
    ids: np.ndarray,
    peak: np.ndarray,
) -> dict[str, dict]:
    """Copy the kept base rows and items into ``staging``; return the skipped records by name."""
    if base is None:
        return {}
    base_ids = np.fromiter(
        (r[0] for r in iter_item_rows(base.folder / ITEMS_FILE)), np.int64, len(base)
    )
    for start in range(0, len(kept), _ADD_CHUNK):
        part = kept[start : start + _ADD_CHUNK]
        # A fresh map per chunk: its pages leave the resident set when it is dropped.
        rows = np.load(base.folder / EMBEDDINGS_FILE, mmap_mode="r")[part]
        writer.write(rows)
        np.maximum(peak, np.abs(rows).max(axis=0), out=peak)
        ids[start : start + len(part)] = base_ids[part]
    keep = set(base_ids[kept].tolist())
    write_items(
        staging / ITEMS_FILE, (r for r in iter_item_rows(base.folder / ITEMS_FILE) if r[0] in keep)
    )
    skipped_file = base.folder / SKIPPED_FILE
    if not skipped_file.is_file():
        return {}
    with skipped_file.open(encoding="utf-8") as handle:
        return {record["name"]: record for record in map(json.loads, handle)}


def _write_skipped(path: Path, skipped: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in skipped:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_vectors(
    staging: Path,
    factory: str,
    base: GalleryIndex | None,
    config: BuildConfig,
    ids: np.ndarray,
    remove: set[int],
    n_kept: int,
    peak: np.ndarray,
) -> None:
    """Write the FAISS file (and, for flat indexes, the int8 codes) from the embeddings file.

    A flat index is streamed to disk chunk by chunk; other types are built in memory (their
    codes are what FAISS searches, so they live in RAM anyway) and then written.
    """
    import faiss

    embeddings = staging / EMBEDDINGS_FILE
    if factory == "Flat":
        rows = iter_npy_rows(embeddings, 0, _ADD_CHUNK)
        chunks = write_codes(staging, rows, len(ids), column_scale(peak))
        write_flat_faiss(staging / VECTORS_FILE, len(peak), chunks, ids)
        return
    index = _faiss_index(base, config, embeddings, ids, remove, n_kept)
    faiss.write_index(index, str(staging / VECTORS_FILE))


def _faiss_index(
    base: GalleryIndex | None,
    config: BuildConfig,
    embeddings: Path,
    ids: np.ndarray,
    remove: set[int],
    n_kept: int,
) -> Any:
    """Extend the base FAISS index, rebuild it after removals, or train a new one."""
    import faiss

    if base is not None:
        index = faiss.read_index(str(base.folder / VECTORS_FILE))  # writable copy
        if remove:
            index.reset()  # keeps the trained quantizers: no retraining
            _add_chunks(index, embeddings, ids, 0)
        else:
            _add_chunks(index, embeddings, ids, n_kept)
        return index
    dim = int(np.load(embeddings, mmap_mode="r").shape[1])
    inner = faiss.index_factory(dim, config.factory, faiss.METRIC_INNER_PRODUCT)
    index = faiss.IndexIDMap2(inner)
    if not index.is_trained:
        _train(index, embeddings, config)
    _add_chunks(index, embeddings, ids, 0)
    return index


def _train(index: Any, embeddings: Path, config: BuildConfig) -> None:
    rng = np.random.default_rng(config.seed)
    vectors = np.load(embeddings, mmap_mode="r")
    n = len(vectors)
    rows = np.sort(rng.choice(n, size=min(n, config.train_size), replace=False))
    log.info("training %s on %d of %d vectors", config.factory, len(rows), n)
    sample = np.ascontiguousarray(vectors[rows])
    del vectors  # unmap: only the sample stays resident
    try:
        index.train(sample)
    except RuntimeError as error:
        raise GalleryIndexError(
            f"cannot train index factory {config.factory!r} on {len(rows)} vectors: "
            f"{str(error).strip().splitlines()[-1]} (use a smaller factory or more images)"
        ) from error


def _add_chunks(index: Any, embeddings: Path, ids: np.ndarray, start: int) -> None:
    begin = start
    for chunk in iter_npy_rows(embeddings, start, _ADD_CHUNK):
        index.add_with_ids(chunk, ids[begin : begin + len(chunk)])
        begin += len(chunk)


def _manifest(
    info: ModelInfo,
    config: BuildConfig,
    base: GalleryIndex | None,
    dim: int,
    count: int,
    next_id: int,
    skipped: list[dict],
) -> Manifest:
    import faiss

    from opencir import __version__

    now = datetime.now(UTC).isoformat(timespec="seconds")
    reasons: dict[str, int] = {}
    for record in skipped:
        key = record["reason"].split(":", 1)[0]
        reasons[key] = reasons.get(key, 0) + 1
    if base is not None:
        return replace(base.manifest, count=count, next_id=next_id, skipped=reasons, updated=now)
    params = config.search_params
    return Manifest(
        model=info,
        dim=dim,
        count=count,
        next_id=next_id,
        factory=config.factory,
        search_params=default_search_params(config.factory) if params is None else params,
        skipped=reasons,
        created=now,
        updated=now,
        versions={"opencir": __version__, "faiss": faiss.__version__},
    )
