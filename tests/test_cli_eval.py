"""``opencir eval`` end to end with a tiny random model on fixture replicas of official layouts."""

from __future__ import annotations

import json

import pytest

import opencir
from opencir.cli import main
from tests.fixtures_benchmarks import make_cirr, make_fashioniq


def test_eval_cli_writes_results_report_and_reuses_cache(tmp_path, capsys) -> None:
    root = make_cirr(tmp_path / "cirr")
    opencir.create_model("sum-tiny").save(tmp_path / "ckpt")
    args = [
        "eval", "--model", str(tmp_path / "ckpt"), "--benchmark", "cirr",
        "--data-root", str(root), "--split", "val", "--out", str(tmp_path / "r.json"),
        "--report", str(tmp_path / "report"), "--cache-dir", str(tmp_path / "cache"),
        "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "R@1" in printed and "R_subset@1" in printed and "exclude_reference" in printed
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["metrics"]) >= {"R@1", "R@5", "R@10", "R@50", "R_subset@1"}
    assert result["protocol"]["exclude_reference"] is True
    assert (tmp_path / "report" / "qualitative.png").stat().st_size > 1000
    assert (tmp_path / "report" / "recall_vs_k.png").is_file()
    assert main(args) == 0
    assert json.loads((tmp_path / "r.json").read_text())["gallery_cache_hit"] is True


def test_eval_cli_protocol_option_reaches_the_adapter(tmp_path) -> None:
    root = make_fashioniq(tmp_path / "fiq")
    out = tmp_path / "r.json"
    args = [
        "eval", "--model", "image-only-tiny", "--benchmark", "fashioniq", "--data-root",
        str(root), "--option", "category=dress", "--option", "exclude_reference=true",
        "--out", str(out), "--no-cache", "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    protocol = json.loads(out.read_text())["protocol"]
    assert protocol["category"] == "dress" and protocol["exclude_reference"] is True


def test_eval_cli_reports_bad_input_without_traceback(tmp_path, caplog) -> None:
    code = main(["eval", "--model", "sum-tiny", "--benchmark", "cirr",
                 "--data-root", str(tmp_path / "missing"), "--no-progress"])  # fmt: skip
    assert code == 2
    assert "dataset folder not found" in caplog.text and "missing" in caplog.text


def test_eval_cli_refuses_a_non_checkpoint_directory(tmp_path) -> None:
    with pytest.raises(ValueError, match="not an OpenCIR checkpoint"):
        opencir.load_model(str(tmp_path))


def test_eval_cli_onnx_backend_matches_torch(tmp_path) -> None:
    root = make_cirr(tmp_path / "cirr")
    opencir.create_model("instructcir-tiny").save(tmp_path / "ckpt")
    metrics = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.json"
        args = [
            "eval", "--model", str(tmp_path / "ckpt"), "--benchmark", "cirr", "--data-root",
            str(root), "--split", "val", "--out", str(out), "--no-cache", "--no-progress",
            "--backend", backend,
        ]  # fmt: skip
        assert main(args) == 0
        result = json.loads(out.read_text())
        metrics[backend] = result["metrics"]
        assert result["model_fingerprint"].endswith("-onnx") == (backend == "onnx")
    assert metrics["onnx"] == pytest.approx(metrics["torch"], abs=1e-6)
