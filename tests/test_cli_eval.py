"""``opencir eval`` end to end with a tiny random model on fixture replicas of official layouts."""

from __future__ import annotations

import json

import pytest
import torch

import opencir
from opencir.cli import main
from opencir.models.card import read_card_records
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
    assert result["rankings"] and result["subset_rankings"]
    slim_args = [*args[: args.index("--out") + 1], str(tmp_path / "slim.json"), "--no-rankings"]
    assert main([*slim_args, *args[args.index("--out") + 2 :]]) == 0
    slim = json.loads((tmp_path / "slim.json").read_text())
    assert slim["rankings"] == {} and slim["subset_rankings"] == {}
    assert slim["metrics"] == result["metrics"] and slim["per_query"] == result["per_query"]


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


# ----------------------------------------------------------------------------- outside models

PLUGIN = '''
import torch

BUILT = []


class MeanColour:
    """A model from outside OpenCIR: embeds the mean colour, ignores the text."""

    def encode_target(self, images):
        rows = [[c / 255 + 0.01 for c in im.convert("RGB").resize((1, 1)).getpixel((0, 0))]
                for im in images]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=1)

    def encode_query(self, images, texts):
        return self.encode_target(images)


def build(pretrained=None):
    BUILT.append(pretrained)
    return MeanColour()


def not_a_model():
    return "just a string"


NOT_CALLABLE = 3
'''


def _eval_args(model: str, root, *extra: str) -> list[str]:
    return ["eval", "--model", model, "--benchmark", "cirr", "--data-root", str(root),
            "--no-cache", "--no-progress", *extra]  # fmt: skip


def test_eval_cli_takes_a_module_factory_model(tmp_path, monkeypatch) -> None:
    (tmp_path / "outside_cir_model.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    root = make_cirr(tmp_path / "cirr")
    out = tmp_path / "r.json"
    args = _eval_args("outside_cir_model:build", root, "--pretrained", "w.bin", "--out", str(out))
    assert main(args) == 0
    import outside_cir_model

    assert outside_cir_model.BUILT == ["w.bin"]  # called once, with --pretrained
    assert set(json.loads(out.read_text())["metrics"]) >= {"R@1", "R_subset@1"}
    assert main(_eval_args("outside_cir_model:build", root)) == 0
    assert outside_cir_model.BUILT == ["w.bin", None]  # no --pretrained: no arguments


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("no_such_cir_module:build", "cannot import module 'no_such_cir_module'"),
        ("outside_cir_model:missing", "has no attribute 'missing'"),
        ("outside_cir_model:NOT_CALLABLE", "not callable"),
        ("outside_cir_model:not_a_model", "without encode_query and encode_target"),
    ],
)
def test_eval_cli_explains_a_bad_module_factory(tmp_path, monkeypatch, caplog, model, message):
    (tmp_path / "outside_cir_model.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(_eval_args(model, make_cirr(tmp_path / "cirr"))) == 2
    assert message in caplog.text and model in caplog.text


# ----------------------------------------------------------------------------- baselines


def test_baselines_run_on_the_backbone_of_a_checkpoint(tmp_path, images) -> None:
    trained = opencir.create_model("instructcir-tiny")
    trained.save(tmp_path / "ckpt")
    tower = trained.query_encoder.tower
    for name in ("image-only-tiny", "text-only-tiny", "sum-tiny"):
        baseline = opencir.load_model(name, pretrained=str(tmp_path / "ckpt"))
        assert baseline.config.method == name.removesuffix("-tiny")
        assert baseline.config.backbone.preprocess == trained.config.backbone.preprocess
        for mine, theirs in zip(baseline.tower.parameters(), tower.parameters(), strict=True):
            assert torch.equal(mine, theirs)
    pixels = trained.pixels(images)
    want = torch.nn.functional.normalize(tower.encode_image(pixels), dim=-1)
    assert torch.allclose(baseline.encode_target(images), want, atol=1e-6)
    root = make_cirr(tmp_path / "cirr")
    assert main(_eval_args("text-only-tiny", root, "--pretrained", str(tmp_path / "ckpt"))) == 0


def test_image_only_baseline_on_the_shipped_backbone(images) -> None:
    from opencir.demo import shipped_checkpoint

    shipped = shipped_checkpoint("shapes-backbone")
    if shipped is None:
        pytest.skip("the package carries no shapes-backbone checkpoint")
    baseline = opencir.load_model("image-only-vit-mini-minilm", pretrained=str(shipped))
    backbone = opencir.load_model(str(shipped))  # the sum baseline it was saved as
    assert torch.equal(baseline.encode_target(images), backbone.encode_target(images))
    assert torch.equal(baseline.encode_query(images, ["x"] * 3), backbone.encode_target(images))


def test_checkpoint_backbone_of_another_architecture_is_refused(tmp_path) -> None:
    opencir.create_model("sum-tiny").save(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="holds a tiny backbone, not dual-tiny; use sum-tiny"):
        opencir.load_model("sum-dual-tiny", pretrained=str(tmp_path / "ckpt"))


# ----------------------------------------------------------------------------- submission


def test_submission_for_a_benchmark_without_test_server_is_refused_up_front(
    tmp_path, caplog
) -> None:
    code = main(["eval", "--model", "sum-tiny", "--benchmark", "fashioniq", "--data-root",
                 str(tmp_path / "not-read"), "--submission", str(tmp_path / "sub")])  # fmt: skip
    assert code == 2
    assert "'fashioniq' has no test server" in caplog.text
    assert "dataset folder not found" not in caplog.text  # refused before reading any data
    assert not (tmp_path / "sub").exists()


def test_eval_cli_card_adds_the_results_to_the_checkpoint_card(tmp_path) -> None:
    root = make_cirr(tmp_path / "cirr")
    checkpoint = opencir.create_model("sum-tiny").save(tmp_path / "ckpt")
    args = [
        "eval", "--model", str(checkpoint), "--benchmark", "cirr", "--data-root", str(root),
        "--card", "--no-cache", "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    (result,) = read_card_records(checkpoint).results
    assert result["benchmark"] == "cirr" and "R@1" in result["metrics"]
    assert "### cirr / val" in (checkpoint / "README.md").read_text(encoding="utf-8")


def test_eval_cli_card_needs_a_checkpoint_folder(tmp_path, caplog) -> None:
    root = make_cirr(tmp_path / "cirr")
    args = ["eval", "--model", "sum-tiny", "--benchmark", "cirr", "--data-root", str(root),
            "--card", "--no-progress"]  # fmt: skip
    assert main(args) == 2
    assert "--card adds the results to a checkpoint folder's model card" in caplog.text
