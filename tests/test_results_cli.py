"""``opencir world triplets`` and ``opencir results``: GT triplets and the results table."""

from __future__ import annotations

import json

import pytest

from opencir.cli import main
from opencir.data.triplets import open_triplets
from opencir.data.worlds import generate_shapes_world


def test_world_triplets_export_resolves_images(tmp_path) -> None:
    root = tmp_path / "w"
    generate_shapes_world(root, n_train=40, n_test=40, n_queries=4, n_val_queries=4,
                          image_size=32, progress=False)  # fmt: skip
    assert main(["world", "triplets", "--root", str(root), "--out", str(tmp_path / "gt")]) == 0
    rows, load = open_triplets([tmp_path / "gt"])
    queries = [json.loads(x) for x in (root / "queries.val.jsonl").read_text().splitlines()]
    assert len(rows) == sum(len(q["targets"]) for q in queries)
    assert {r.text for r in rows} == {q["text"] for q in queries}
    assert load(rows[0].target).size == (32, 32)


def _result(path, **metrics) -> str:
    path.write_text(json.dumps({"metrics": metrics}))
    return str(path)


def test_results_table_and_scaling_plot(tmp_path, capsys) -> None:
    a = _result(tmp_path / "a.json", **{"R@1": 10.0, "R@10": 40.0})
    b = _result(tmp_path / "b.json", **{"R@1": 20.5, "R@10": 55.25, "mAP@10": 30.0})
    args = ["results", f"sum={a}", f"S1={b}", "--metrics", "R@1,R@10,mAP@10",
            "--scaling", f"100={a}", f"1000={b}", "--plot", str(tmp_path / "s.png"),
            "--baselines", "sum"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| sum | 10.00 | 40.00 | - |" in out and "| S1 | 20.50 | 55.25 | 30.00 |" in out
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_results_rejects_a_file_that_is_not_a_result(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit):
        main(["results", "no-equals-sign"])
    assert main(["results", f"x={bad}"]) == 2
    good = _result(tmp_path / "good.json", **{"R@1": 1.0})
    plot = ["--scaling", f"1={good}", "--plot", str(tmp_path / "p.png")]
    assert main(["results", f"x={good}", *plot, "--baselines", "nope"]) == 2
