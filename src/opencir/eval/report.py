"""Qualitative grids and recall curves from an :class:`EvalResult`.

The grid follows InstructCIR (Fig. 5/6): one row per query with the modification text as
its title, the reference image framed green, then the top results with every ground truth
framed red. The recall curve plots R@K against K from the kept rankings, computed with the
shared metric core.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont, ImageOps

from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.evaluate import EvalResult
from opencir.eval.metrics import recall_at_k

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class GridStyle:
    """Layout and colours of the qualitative grid (pixels)."""

    thumb: int = 128
    border: int = 5
    gap: int = 6
    separator: int = 22  # extra space between the reference and the results
    title_height: int = 22
    label_height: int = 18
    font_size: int = 14
    reference_color: RGB = (0, 170, 0)
    target_color: RGB = (220, 0, 0)
    background: RGB = (255, 255, 255)
    thumb_background: RGB = (235, 235, 235)


def cell_box(row: int, col: int, style: GridStyle = GridStyle()) -> tuple[int, int, int, int]:
    """Outer box ``(x0, y0, x1, y1)``, frame included, of a grid cell.

    Column 0 is the reference, column ``r`` the rank-``r`` result.
    """
    cell = style.thumb + 2 * style.border
    x0 = style.gap + col * (cell + style.gap) + (style.separator if col > 0 else 0)
    y0 = style.gap + row * _row_height(style) + style.title_height
    return x0, y0, x0 + cell, y0 + cell


def _row_height(style: GridStyle) -> int:
    return style.title_height + style.thumb + 2 * style.border + style.label_height + style.gap


# ----------------------------------------------------------------------------- grid


def save_qualitative_grid(
    result: EvalResult,
    split: BenchmarkSplit,
    path: str | Path,
    query_ids: Sequence[str] | None = None,
    num_queries: int = 6,
    top_k: int = 10,
    style: GridStyle = GridStyle(),
) -> Path:
    """Write a PNG grid of queries and their top ``top_k`` results; return its path.

    Without ``query_ids``, ``num_queries`` queries spread evenly over the split are shown.
    """
    if top_k < 1 or num_queries < 1:
        raise ValueError(f"top_k and num_queries must be >= 1, got {top_k} and {num_queries}")
    queries = _pick_queries(result, split, query_ids, num_queries)
    width = cell_box(0, top_k, style)[2] + style.gap
    height = style.gap + len(queries) * _row_height(style)
    canvas = Image.new("RGB", (width, height), style.background)
    draw, font = ImageDraw.Draw(canvas), _font(style.font_size)
    for row, query in enumerate(queries):
        _draw_row(canvas, draw, font, row, query, result.rankings[query.id][:top_k], split, style)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    log.info("qualitative grid with %d queries written to %s", len(queries), path)
    return path


def _pick_queries(
    result: EvalResult, split: BenchmarkSplit, query_ids: Sequence[str] | None, n: int
) -> list[CIRQuery]:
    _check_match(result, split)
    by_id = {q.id: q for q in split.queries if q.id in result.rankings}
    if not by_id:
        raise ValueError("result has no rankings for this split; evaluate with keep_rankings > 0")
    if query_ids is None:
        ranked = list(by_id.values())
        step = max(1, len(ranked) // n)
        return ranked[::step][:n]
    unknown = [qid for qid in query_ids if qid not in by_id]
    if unknown:
        raise ValueError(f"query id {unknown[0]!r} has no ranking in the result for this split")
    return [by_id[qid] for qid in query_ids]


def _check_match(result: EvalResult, split: BenchmarkSplit) -> None:
    """The result must come from this split: its rankings name this split's images."""
    if (result.benchmark, result.split) != (split.benchmark, split.split):
        raise ValueError(
            f"result is for {result.benchmark}/{result.split} but the split is "
            f"{split.benchmark}/{split.split}; expected the split that was evaluated"
        )
    gallery = set(split.gallery)
    for qid, keys in result.rankings.items():
        unknown = [k for k in keys if k not in gallery]
        if unknown:
            raise ValueError(f"ranking of {qid!r} names {unknown[0]!r}, not in the split gallery")


def _draw_row(canvas, draw, font, row, query, ranked, split, style) -> None:
    x0, y0, _, _ = cell_box(row, 0, style)
    title = _fit(draw, font, query.text, canvas.width - x0 - style.gap)
    draw.text((x0, y0 - style.title_height + 3), title, fill=(0, 0, 0), font=font)
    _paste_cell(
        canvas, draw, split.load_image(query.reference), row, 0, style.reference_color, style
    )
    _label(draw, font, "reference", row, 0, style)
    targets = set(query.targets)
    for rank, key in enumerate(ranked, start=1):
        color = style.target_color if key in targets else None
        _paste_cell(canvas, draw, split.load_image(key), row, rank, color, style)
        _label(draw, font, str(rank), row, rank, style)


def _paste_cell(canvas, draw, image: Image.Image, row, col, color: RGB | None, style) -> None:
    """Letterbox ``image`` into its cell; draw the coloured frame, if any."""
    x0, y0, x1, y1 = cell_box(row, col, style)
    if color is not None:
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=color)
    inner = (x0 + style.border, y0 + style.border)
    draw.rectangle(
        (*inner, inner[0] + style.thumb - 1, inner[1] + style.thumb - 1),
        fill=style.thumb_background,
    )
    thumb = ImageOps.contain(image.convert("RGB"), (style.thumb, style.thumb))
    offset = ((style.thumb - thumb.width) // 2, (style.thumb - thumb.height) // 2)
    canvas.paste(thumb, (inner[0] + offset[0], inner[1] + offset[1]))


def _label(draw, font, text: str, row: int, col: int, style: GridStyle) -> None:
    x0, _, x1, y1 = cell_box(row, col, style)
    width = draw.textlength(text, font=font)
    draw.text((x0 + (x1 - x0 - width) / 2, y1 + 2), text, fill=(60, 60, 60), font=font)


def _fit(draw, font, text: str, width: float) -> str:
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


# ----------------------------------------------------------------------------- curves


def recall_curve(
    result: EvalResult, split: BenchmarkSplit, max_k: int | None = None
) -> tuple[list[int], list[float]]:
    """``(ks, recalls)`` for K = 1..max_k from the kept rankings, counted as ``R@K`` is."""
    _check_match(result, split)
    queries = [q for q in split.queries if q.id in result.rankings]
    if not queries:
        raise ValueError("result has no rankings for this split; evaluate with keep_rankings > 0")
    depth = max(len(result.rankings[q.id]) for q in queries)
    max_k = depth if max_k is None else max_k
    if not 1 <= max_k <= depth:
        raise ValueError(f"max_k must be between 1 and the ranking depth {depth}, got {max_k}")
    index = {key: i for i, key in enumerate(split.gallery)}
    ranks = np.full((len(queries), max_k), -1, dtype=np.int64)
    for row, q in enumerate(queries):
        keys = result.rankings[q.id][:max_k]
        ranks[row, : len(keys)] = [index[k] for k in keys]
    targets = [[index[t] for t in q.targets if t in index] for q in queries]
    ks = list(range(1, max_k + 1))
    values = recall_at_k(ranks, targets, ks, first_target_only=split.recall_first_target)
    return ks, [values[k] for k in ks]


def plot_recall_curve(
    results: EvalResult | Mapping[str, EvalResult],
    split: BenchmarkSplit,
    path: str | Path,
    max_k: int | None = None,
) -> Path:
    """Write a PNG line plot of R@K against K, one line per named result; return its path."""
    if isinstance(results, EvalResult):
        results = {results.model_fingerprint: results}
    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, result in results.items():
        ks, values = recall_curve(result, split, max_k)
        ax.plot(ks, values, marker="o" if len(ks) <= 20 else None, markersize=3, label=name)
    ax.set(xlabel="K", ylabel="Recall@K (%)", ylim=(0, 100))
    ax.set_title(f"{split.benchmark}/{split.split}: recall vs K")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    log.info("recall curve written to %s", path)
    return path
