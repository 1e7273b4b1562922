"""``opencir index ...`` and ``opencir search`` end to end through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from opencir.cli import main
from opencir.index import GalleryIndex
from tests.test_serve_support import make_checkpoint, make_gallery


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    make_checkpoint(root / "ckpt")
    make_gallery(root / "photos", 10)
    args = ["index", "build", "--model", str(root / "ckpt"), "--images", str(root / "photos")]
    assert main([*args, "--out", str(root / "idx"), "--no-progress", "--batch-size", "4"]) == 0
    return root


def test_build_info_verify(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["index", "info", "--index", str(workspace / "idx")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 10 and info["format"] == "opencir-index"
    assert main(["index", "verify", "--index", str(workspace / "idx")]) == 0
    assert "all checksums match" in capsys.readouterr().out


def test_search_prints_a_ranked_table_and_writes_a_grid(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = workspace / "grid.png"
    args = ["search", "--index", str(workspace / "idx"), "--id", "2", "--text", "make it green"]
    assert main([*args, "-k", "4", "--grid", str(grid)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "query: 'make it green'"
    assert lines[1].split() == ["rank", "score", "id", "name"]
    rows = [line.split() for line in lines[2:6]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert all(r[2] != "2" for r in rows), "the reference itself is left out"
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.width > 4 * 160


def test_search_with_an_image_file_as_json(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = workspace / "photos" / "img004.png"
    args = ["search", "--index", str(workspace / "idx"), "--image", str(image), "--text", "red"]
    assert main([*args, "-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in result["results"]] == [1, 2, 3]
    item_id = GalleryIndex.open(workspace / "idx").find("img004.png").id
    by_id = ["search", "--index", str(workspace / "idx"), "--id", str(item_id), "--text", "red"]
    assert main([*by_id, "-k", "3", "--json", "--keep-reference"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in same["results"]] == [r["id"] for r in result["results"]]


def test_add_and_remove(
    workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    index = tmp_path / "idx"
    import shutil

    shutil.copytree(workspace / "idx", index)
    make_gallery(tmp_path / "more", 12)
    assert main(["index", "add", "--index", str(index), "--images", str(tmp_path / "more")]) == 0
    assert "now holds 12 images" in capsys.readouterr().out  # names img010, img011 are new
    assert main(["index", "remove", "--index", str(index), "--id", "0", "1"]) == 0
    assert "now holds 10 images" in capsys.readouterr().out


def test_user_errors_exit_2_with_a_message(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["search", "--index", str(workspace / "idx"), "--id", "999", "--text", "x"]
    assert main(args) == 2
    assert "no image with id 999" in caplog.text
    assert main(["search", "--index", str(workspace / "nope"), "--id", "1", "--text", "x"]) == 2
    assert "does not exist" in caplog.text
    assert main(["index", "remove", "--index", str(workspace / "idx")]) == 2
    build = ["index", "build", "--model", "no-such-model", "--images", str(workspace / "photos")]
    assert main([*build, "--out", str(workspace / "x")]) == 2


def test_build_refuses_a_model_no_server_could_reload(
    workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build = ["index", "build", "--model", "instructcir-tiny", "--images", str(workspace / "photos")]
    assert main([*build, "--out", str(workspace / "random"), "--no-progress"]) == 2
    assert "new random weights on every load" in caplog.text
    assert "Pass a checkpoint folder" in caplog.text
    assert not (workspace / "random").exists()
