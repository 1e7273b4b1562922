"""The on-disk layout every miniature world shares, and the one writer that produces it.

::

    ROOT/images/<id>.png
    ROOT/images.jsonl          id, file, alt_text, attributes, split ("train" | "test")
    ROOT/queries.train.jsonl   optional: more queries over train-side images (supervised training)
    ROOT/queries.val.jsonl     queries over train-side images (model selection)
    ROOT/queries.test.jsonl    queries over test-side images (the benchmark)
    ROOT/world.json            world, seed, version, counts, params — written last (done-marker)

A query row holds id, reference, text, targets, kind, style, plus ``edit`` (the structured
modification) and ``distractors`` (hard negatives built for it). A world is written into a
hidden temporary sibling of ROOT and renamed into place only when complete, so ROOT is either
absent, a finished world, or the previous finished world. Images are streamed to disk (optionally
rendered by worker processes); only 64-bit digests of attribute sets stay in memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from opencir.atomic import staging_dir, swap_in

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
IMAGES_DIR = "images"
IMAGES_FILE = "images.jsonl"
WORLD_FILE = "world.json"
SIDES = ("train", "test")
QUERY_SPLITS = ("train", "val", "test")
_CHUNK = 256  # images handed to the worker pool at a time (bounds memory)

Renderer = Callable[[Any], Image.Image]


def queries_file(split: str) -> str:
    """File name of the queries of ``split`` ("train", "val" or "test")."""
    if split not in QUERY_SPLITS:
        raise ValueError(f"worlds have queries for {QUERY_SPLITS}, not {split!r}")
    return f"queries.{split}.jsonl"


def attribute_digest(attributes: Mapping[str, Any]) -> int:
    """A 64-bit digest of an attribute set: equal digests ⇔ the same scene/emoji semantics."""
    text = json.dumps(attributes, sort_keys=True, separators=(",", ":"))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class ImageRecord:
    """One image of a world: its id, alt text, attribute metadata and side (train/test)."""

    id: str
    alt_text: str
    attributes: Mapping[str, Any]
    split: str

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "file": f"{IMAGES_DIR}/{self.id}.png",
            "alt_text": self.alt_text,
            "attributes": self.attributes,
            "split": self.split,
        }


def config_params(cfg: Any) -> dict[str, Any]:
    """A world config's fields as ``world.json`` records them: all but ``seed`` (recorded
    apart), and the later options (phrasings, palette) only when they are not their default,
    so a world made before those options existed is still the same world."""
    params = {k: v for k, v in asdict(cfg).items() if k != "seed"}
    for option, default in _LATER_OPTIONS.items():
        if params.get(option) == default:
            del params[option]
    return params


# Options added after the first worlds were made, with the value those worlds had.
_LATER_OPTIONS = {"val_phrasing": "plain", "train_phrasing": "plain", "palette": "canonical"}


@dataclass(frozen=True)
class QueryRecord:
    """One composed query; ``targets`` are every image of the side matching the edited scene."""

    id: str
    reference: str
    text: str
    targets: tuple[str, ...]
    kind: str
    style: str
    edit: Mapping[str, Any] = field(default_factory=dict)
    distractors: tuple[str, ...] = ()

    def row(self) -> dict[str, Any]:
        row = asdict(self)
        row["targets"], row["distractors"] = list(self.targets), list(self.distractors)
        return row


@dataclass(frozen=True)
class WorldInfo:
    """What ``world.json`` records about a finished world."""

    root: Path
    world: str
    seed: int
    version: int
    counts: Mapping[str, int]
    params: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "world": self.world,
            "seed": self.seed,
            "version": self.version,
            "counts": dict(self.counts),
            "params": dict(self.params),
        }


class DigestIndex:
    """Attribute digest → ids of the images having it, for one side of a world."""

    def __init__(self) -> None:
        self._ids: dict[int, list[str]] = {}

    def add(self, record: ImageRecord) -> None:
        self._ids.setdefault(attribute_digest(record.attributes), []).append(record.id)

    def __contains__(self, digest: int) -> bool:
        return digest in self._ids

    def digests(self) -> set[int]:
        return set(self._ids)

    def matches(self, attributes: Mapping[str, Any], exclude: str = "") -> tuple[str, ...]:
        """Ids whose attributes equal ``attributes`` (the ground truth), minus ``exclude``."""
        found = self._ids.get(attribute_digest(attributes), [])
        return tuple(i for i in found if i != exclude)

    def tap(self, items: Iterable[tuple[ImageRecord, Any]]) -> Iterator[tuple[ImageRecord, Any]]:
        """Pass ``items`` through, indexing each record on the way (for streaming writes)."""
        for record, payload in items:
            self.add(record)
            yield record, payload


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a bad line raises ``ValueError`` naming file and line."""
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            yield row


def read_world_info(root: str | Path) -> WorldInfo:
    """Parse ``ROOT/world.json``; raises FileNotFoundError / ValueError naming the file."""
    path = Path(root) / WORLD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no finished world at {Path(root)}: {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return WorldInfo(
            Path(root),
            str(data["world"]),
            int(data["seed"]),
            int(data["version"]),
            dict(data["counts"]),
            dict(data["params"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: malformed world file ({err!r})") from err


def _normalise(params: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(params), sort_keys=True))


def _save_png(render: Renderer, payload: Any, path: str) -> None:
    render(payload).save(path, format="PNG", optimize=False)


class WorldWriter:
    """Streams images and queries of one world into a (temporary) folder."""

    def __init__(self, folder: Path, workers: int = 0, progress: bool = True) -> None:
        self.folder = folder
        self.workers = workers
        self.progress = progress
        self.counts: Counter[str] = Counter()
        (folder / IMAGES_DIR).mkdir(parents=True, exist_ok=True)

    def write_images(
        self,
        items: Iterable[tuple[ImageRecord, Any]],
        render: Renderer,
        total: int | None = None,
        desc: str = "images",
    ) -> None:
        """Render each ``(record, payload)`` with ``render(payload)`` and append its row.

        Items are consumed in chunks, so memory stays flat however many images there are;
        with ``workers`` > 1 each chunk is rendered by a process pool (``render`` must be a
        module-level function) and rows are still written in input order.
        """
        pool = ProcessPoolExecutor(self.workers) if self.workers > 1 else None
        bar = tqdm(total=total, desc=desc, unit="img", disable=not self.progress)
        try:
            with (self.folder / IMAGES_FILE).open("a", encoding="utf-8") as rows:
                iterator = iter(items)
                while chunk := list(itertools.islice(iterator, _CHUNK)):
                    self._render_chunk(chunk, render, pool)
                    for record, _ in chunk:
                        rows.write(json.dumps(record.row(), ensure_ascii=False) + "\n")
                        self.counts[f"images.{record.split}"] += 1
                    bar.update(len(chunk))
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown()

    def _render_chunk(
        self, chunk: list[tuple[ImageRecord, Any]], render: Renderer, pool: Executor | None
    ) -> None:
        save = partial(_save_png, render)
        payloads = [payload for _, payload in chunk]
        paths = [str(self.folder / IMAGES_DIR / f"{record.id}.png") for record, _ in chunk]
        list(pool.map(save, payloads, paths) if pool else map(save, payloads, paths))

    def write_queries(self, split: str, queries: Iterable[QueryRecord]) -> int:
        """Write ``queries.<split>.jsonl`` (replacing it) and return the count."""
        count = 0
        with (self.folder / queries_file(split)).open("w", encoding="utf-8") as f:
            for query in queries:
                f.write(json.dumps(query.row(), ensure_ascii=False) + "\n")
                count += 1
        self.counts[f"queries.{split}"] = count
        return count

    def finish(self, world: str, seed: int, params: Mapping[str, Any]) -> WorldInfo:
        """Write ``world.json`` (the done-marker) and return the world's info."""
        counts = dict(sorted(self.counts.items()))
        info = WorldInfo(self.folder, world, seed, FORMAT_VERSION, counts, _normalise(params))
        text = json.dumps(info.to_json(), indent=2, sort_keys=True)
        (self.folder / WORLD_FILE).write_text(text + "\n", encoding="utf-8")
        return info


def current_world(root: Path, world: str, seed: int, params: Mapping[str, Any]) -> WorldInfo | None:
    """The finished world at ``root`` when it was made with exactly these arguments."""
    try:
        info = read_world_info(root)
    except (FileNotFoundError, ValueError):
        return None
    same = (info.world, info.seed, info.version) == (world, seed, FORMAT_VERSION)
    return info if same and dict(info.params) == _normalise(params) else None


def _check_replaceable(root: Path, overwrite: bool) -> None:
    """Refuse to replace anything but an empty folder, or (with ``overwrite``) another world."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return
    if not (root / WORLD_FILE).is_file():
        raise FileExistsError(
            f"{root} exists and is not a world folder (no {WORLD_FILE}); refusing to replace it. "
            "Choose an empty or new folder."
        )
    if not overwrite:
        raise FileExistsError(
            f"{root} holds a world made with other arguments (see {root / WORLD_FILE}); "
            "pass overwrite=True to replace it or choose another folder"
        )


def build_world(
    root: str | Path,
    world: str,
    seed: int,
    params: Mapping[str, Any],
    populate: Callable[[WorldWriter], None],
    *,
    workers: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> WorldInfo:
    """Write a world at ``root`` with ``populate(writer)``; a no-op when it is already there.

    ``params`` are every argument that changes the output: a finished world with equal
    ``world``, ``seed`` and ``params`` is reused as is.
    """
    root = Path(root).expanduser().resolve()
    found = current_world(root, world, seed, params)
    if found is not None:
        log.info("%s world at %s is up to date; nothing to do", world, root)
        return found
    _check_replaceable(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.partial-*"):
        log.warning("%s is left over from an interrupted run; safe to delete", stale)
    tmp = staging_dir(root.parent, f".{root.name}.partial-")
    try:
        writer = WorldWriter(tmp, workers=workers, progress=progress)
        populate(writer)
        info = writer.finish(world, seed, params)
        swap_in(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s world to %s: %s", world, root, dict(info.counts))
    return WorldInfo(root, info.world, info.seed, info.version, info.counts, info.params)
