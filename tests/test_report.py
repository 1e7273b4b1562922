"""Qualitative grids and recall curves: files, sizes and frame colours."""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw

from opencir.eval.benchmark import BenchmarkSplit, CIRQuery
from opencir.eval.evaluate import EvalResult
from opencir.eval.report import (
    GridStyle,
    cell_box,
    plot_recall_curve,
    recall_curve,
    save_qualitative_grid,
)

COLOURS = [(40, 90, 200), (250, 200, 40), (120, 60, 160), (30, 160, 160), (90, 90, 90)]
SHAPES = ["circle", "square", "triangle"]


def shape_image(n: int) -> Image.Image:
    """A small scene: one coloured shape on a light background, wide or tall by turns."""
    size = (96, 64) if n % 2 else (64, 96)
    image = Image.new("RGB", size, (245, 242, 230))
    draw, box = ImageDraw.Draw(image), (12, 12, size[0] - 12, size[1] - 12)
    colour, shape = COLOURS[n % len(COLOURS)], SHAPES[n % len(SHAPES)]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon(
            [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])], fill=colour
        )
    return image


KEYS = [f"img{n:02d}" for n in range(15)]
QUERIES = [
    CIRQuery("a", "img00", "make the circle a yellow square", targets=("img01",)),
    CIRQuery("b", "img05", "turn it into a purple triangle, bigger", targets=("img02", "img07")),
    CIRQuery("c", "img09", "same shape but grey", targets=("img14",)),
]
# Ground truth at rank 3 for "a", ranks 1 and 10 for "b", outside the top 10 for "c".
RANKINGS = {
    "a": ["img03", "img04", "img01", "img06", "img08", "img10", "img11", "img12", "img13", "img02"],
    "b": ["img02", "img03", "img04", "img06", "img08", "img09", "img10", "img11", "img12", "img07"],
    "c": ["img01", "img02", "img03", "img04", "img05", "img06", "img07", "img08", "img10", "img11"],
}


def make_split() -> BenchmarkSplit:
    return BenchmarkSplit(
        benchmark="shapes",
        split="test",
        gallery=KEYS,
        queries=QUERIES,
        load_image=lambda key: shape_image(int(key[3:])),
        protocol={},
    )


def make_result(rankings=RANKINGS, model="tiny-model") -> EvalResult:
    return EvalResult(
        benchmark="shapes",
        split="test",
        metrics={},
        per_group={},
        group_mean={},
        protocol={},
        model_fingerprint=model,
        dataset_fingerprint="d",
        num_queries=3,
        num_gallery=15,
        rankings=rankings,
    )


def frame_pixel(image: Image.Image, row: int, col: int, style: GridStyle) -> tuple:
    x0, y0, _, _ = cell_box(row, col, style)
    return image.getpixel((x0 + style.border // 2, y0 + style.border // 2))


def test_grid_is_a_png_of_the_expected_size(tmp_path):
    style = GridStyle()
    path = save_qualitative_grid(make_result(), make_split(), tmp_path / "grid.png", style=style)
    image = Image.open(path)
    assert image.format == "PNG" and image.mode == "RGB"
    cell = style.thumb + 2 * style.border
    # 1 reference + 10 results across; 3 rows of title + cell + label.
    assert image.width == pytest.approx(
        11 * (cell + style.gap) + style.separator, abs=2 * style.gap
    )
    assert image.height == pytest.approx(
        3 * (cell + style.title_height + style.label_height), rel=0.1
    )
    assert path.stat().st_size > 5_000


def test_grid_frames_reference_green_and_ground_truth_red(tmp_path):
    style = GridStyle(thumb=48)
    path = save_qualitative_grid(make_result(), make_split(), tmp_path / "grid.png", style=style)
    image = Image.open(path).convert("RGB")
    for row in range(3):
        assert frame_pixel(image, row, 0, style) == style.reference_color
    red = {(0, 3), (1, 1), (1, 10)}
    for row in range(3):
        for col in range(1, 11):
            want = style.target_color if (row, col) in red else style.background
            assert frame_pixel(image, row, col, style) == want, (row, col)
    # The thumbnail itself is pasted inside the frame: its centre shows the shape's colour.
    x0, y0, x1, y1 = cell_box(0, 3, style)
    assert image.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == COLOURS[1]


def test_grid_picks_queries_by_id(tmp_path):
    style = GridStyle(thumb=32)
    path = save_qualitative_grid(
        make_result(), make_split(), tmp_path / "one.png", query_ids=["b"], top_k=4, style=style
    )
    image = Image.open(path)
    assert image.size == (
        cell_box(0, 4, style)[2] + style.gap,
        style.gap + cell_box(1, 0, style)[1] - cell_box(0, 0, style)[1],
    )
    assert frame_pixel(image.convert("RGB"), 0, 1, style) == style.target_color
    with pytest.raises(ValueError, match="query id 'zzz' has no ranking"):
        save_qualitative_grid(make_result(), make_split(), tmp_path / "x.png", query_ids=["zzz"])


def test_recall_curve_from_rankings(tmp_path):
    ks, values = recall_curve(make_result(), make_split())
    assert ks == list(range(1, 11))
    assert values[0] == pytest.approx(100 / 3)  # "b" hits at rank 1
    assert values[2] == pytest.approx(200 / 3)  # "a" hits at rank 3
    assert values[9] == pytest.approx(200 / 3)  # "c" never does
    worse = {qid: list(reversed(r)) for qid, r in RANKINGS.items()}
    path = plot_recall_curve(
        {"ours": make_result(), "reversed": make_result(worse, "rev")},
        make_split(),
        tmp_path / "plots" / "recall.png",
    )
    image = Image.open(path)
    assert image.format == "PNG" and image.size == (600, 400)
    assert path.stat().st_size > 10_000


def test_reports_reject_a_result_from_another_split(tmp_path):
    other = make_split()
    other.split = "val"
    with pytest.raises(ValueError, match="result is for shapes/test but the split is shapes/val"):
        save_qualitative_grid(make_result(), other, tmp_path / "grid.png")
    with pytest.raises(ValueError, match="not in the split gallery"):
        recall_curve(make_result({"a": ["elsewhere"]}), make_split())
    with pytest.raises(ValueError, match="no rankings"):
        plot_recall_curve(make_result({}), make_split(), tmp_path / "r.png")
