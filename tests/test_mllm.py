"""S2: the multimodal-LLM embedder — prompts, pooling, LoRA, the two stages, loading, eval."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import opencir
from opencir.cli import main
from opencir.models import MLLMConfig, get_model_config, list_models
from opencir.models.mllm import MLLMEmbedder, n_image_tokens
from opencir.models.registry import split_name
from opencir.models.tokenizer import byte_level_tokenizer
from opencir.train import DataConfig, OptimConfig, TrainConfig, train
from opencir.train.config import MLLMTrainConfig
from opencir.train.loop import Trainer
from opencir.train.tasks import save_backbone
from tests.fixtures_benchmarks import make_cirr
from tests.test_train import _triplets

TEXTS = ["red", "make the big circle a small blue square", "move it left, please"]


@pytest.fixture
def model() -> MLLMEmbedder:
    return opencir.create_model("mllm-tiny").eval()


def test_registry_names_and_configs() -> None:
    names = list_models()
    assert {"mllm-tiny", "mllm-mini", "mllm-llava-1.5-7b"} <= set(names)
    assert "instructcir-llava-1.5-7b" not in names and "mllm-vit-l-14" not in names
    assert split_name("mllm-tiny") == ("mllm", "tiny")
    assert get_model_config("mllm-llava-1.5-7b").mllm.chat_template == "USER: {prompt} ASSISTANT:"
    assert get_model_config("mllm-tiny", pooling="mean").mllm.pooling == "mean"
    assert "mllm" not in get_model_config("instructcir-tiny").to_dict()
    with pytest.raises(TypeError, match="mllm options"):
        get_model_config("mllm-tiny", poolng="mean")
    with pytest.raises(ValueError, match="query_prompt must contain <image>"):
        MLLMConfig(query_prompt="describe {text}")


def test_prompt_expands_the_image_and_cuts_only_the_user_text(model: MLLMEmbedder) -> None:
    tokenizer = model.prompt_tokenizer("query")
    row = tokenizer.encode("x" * 500)
    n_images = n_image_tokens(model.mllm.config)
    assert n_images == (32 // 8) ** 2 and row.count(model.image_token_id) == n_images
    assert row[0] == model.tokenizer.bos_token_id
    assert model.tokenizer.decode(row[-12:]).endswith("in one word:")
    quoted = model.tokenizer.decode(row).split('"')[1]
    assert quoted == "x" * model.config.backbone.max_text_length
    assert model.prompt_tokenizer("text").encode("a cat").count(model.image_token_id) == 0
    sneaky = tokenizer.encode("add an <image> here")
    assert sneaky.count(model.image_token_id) == n_images  # user text cannot add image slots


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_is_the_same_under_left_right_and_no_padding(
    model: MLLMEmbedder, images: list[Image.Image], pooling: str
) -> None:
    left = model.with_settings(pooling=pooling, padding_side="left").encode_query(images, TEXTS)
    right = model.with_settings(padding_side="right").encode_query(images, TEXTS)
    single = torch.cat([model.encode_query([im], [t]) for im, t in zip(images, TEXTS, strict=True)])
    tokens = model.prompt_tokenizer("query")(TEXTS)
    assert tokens["attention_mask"].sum(1).unique().numel() == 3  # lengths really differ
    torch.testing.assert_close(left, single, atol=2e-5, rtol=0)
    torch.testing.assert_close(right, single, atol=2e-5, rtol=0)


def test_last_token_embedding_is_the_hf_hidden_state_at_the_prompt_end(
    model: MLLMEmbedder, images: list[Image.Image]
) -> None:
    pixels = model.preprocess(images)
    expected = []
    for i, text in enumerate(TEXTS):
        ids = torch.tensor([model.prompt_tokenizer("query").encode(text)])
        hidden = model.mllm(input_ids=ids, pixel_values=pixels[i : i + 1]).last_hidden_state
        expected.append(torch.nn.functional.normalize(hidden[0, -1], dim=-1))
    got = model.encode_query(images, TEXTS)
    torch.testing.assert_close(got, torch.stack(expected), atol=2e-5, rtol=0)
    assert got.shape == (3, model.embed_dim) and model.encode_target(images).shape == got.shape


def test_lora_merge_keeps_the_embeddings(model: MLLMEmbedder, images: list[Image.Image]) -> None:
    adapters = model.add_lora(rank=4, alpha=8.0)
    ids = {id(p) for p in adapters}
    assert ids and all("lora_" in n for n, p in model.named_parameters() if id(p) in ids)
    with torch.no_grad():
        for p in adapters:
            p.normal_(std=0.2)
    with_adapters = model.encode_query(images, TEXTS)
    model.merge_lora()
    assert not model.has_lora and not any("lora" in k for k in model.state_dict())
    torch.testing.assert_close(model.encode_query(images, TEXTS), with_adapters, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="none of the LoRA target modules"):
        model.add_lora(rank=2, alpha=2.0, targets=("no_such_proj",))


def test_save_load_is_bit_identical(
    model: MLLMEmbedder, images: list[Image.Image], tmp_path: Path
) -> None:
    model.save(tmp_path / "ckpt")
    loaded = opencir.load(tmp_path / "ckpt")
    assert isinstance(loaded, MLLMEmbedder) and loaded.fingerprint() == model.fingerprint()
    assert torch.equal(loaded.encode_query(images, TEXTS), model.encode_query(images, TEXTS))
    assert torch.equal(loaded.encode_target(images), model.encode_target(images))


def _hf_llava_dir(directory: Path, image_token: str = "<image>") -> Path:
    """A tiny LLaVA checkpoint as Hugging Face writes one (weights, tokenizer, preprocessing)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    architecture = get_model_config("mllm-tiny").backbone.architecture
    LlavaForConditionalGeneration(LlavaConfig(**architecture)).save_pretrained(directory)
    tokenizer = byte_level_tokenizer(512)
    tokenizer.add_tokens([image_token], special_tokens=True)
    tokenizer.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(
        json.dumps({"crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
                    "image_mean": [0.5] * 3, "image_std": [0.25] * 3, "resample": 3})
    )  # fmt: skip
    return directory


def test_loads_a_hugging_face_llava_directory(images: list[Image.Image], tmp_path: Path) -> None:
    from transformers import LlavaForConditionalGeneration

    directory = _hf_llava_dir(tmp_path / "llava")
    model = opencir.models.load_model(f"mllm-tiny@{directory}")
    reference = LlavaForConditionalGeneration.from_pretrained(directory).eval()
    pixels = model.preprocess(images[:1])
    ids = torch.tensor([model.prompt_tokenizer("query").encode(TEXTS[0])])
    with torch.no_grad():
        out = reference(input_ids=ids, pixel_values=pixels, output_hidden_states=True)
    expected = torch.nn.functional.normalize(out.hidden_states[-1][:, -1], dim=-1)
    torch.testing.assert_close(model.encode_query(images[:1], TEXTS[:1]), expected)
    assert model.config.backbone.pretrained == str(directory.resolve())


def test_a_tokenizer_without_the_image_token_is_refused(tmp_path: Path) -> None:
    directory = _hf_llava_dir(tmp_path / "llava", image_token="<img>")
    with pytest.raises(ValueError, match="do not belong together"):
        opencir.create_model("mllm-tiny", pretrained=str(directory))


def _stage(tmp: Path, stage: str, out: str, **changes) -> TrainConfig:
    base = TrainConfig(
        stage=stage, model="mllm-tiny", out_dir=str(tmp / out), steps=2, batch_size=4,
        log_every=1, checkpoint_every=2, tensorboard=False, temperature=0.05,
        optim=OptimConfig(lr=1e-3, warmup_steps=1),
        mllm=MLLMTrainConfig(lora_rank=4, lora_alpha=8.0, lora_dropout=0.1),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_only_adapters_and_projector_train_by_default(tmp_path: Path) -> None:
    def trainable(config: TrainConfig) -> set[str]:
        trainer = Trainer(config)
        return {n for n, p in trainer.model.named_parameters() if p.requires_grad}

    names = trainable(_stage(tmp_path, "cir", "a"))
    assert names and all("lora_" in n or "multi_modal_projector" in n for n in names)
    assert any("lora_" in n for n in names)
    with_vision = trainable(
        _stage(tmp_path, "cir", "b", mllm=MLLMTrainConfig(lora_rank=4, train_vision=True))
    )
    assert any("vision_tower" in n for n in with_vision)
    full_lm = trainable(_stage(tmp_path, "pretrain", "c", mllm=MLLMTrainConfig(lora_rank=0)))
    assert any("embed_tokens" in n for n in full_lm) and not any("lora_" in n for n in full_lm)
    lm_stage = trainable(_stage(tmp_path, "lm", "d"))
    assert all(n.startswith("mllm.language_model.") for n in lm_stage)
    with pytest.raises(ValueError, match="mllm-\\* models train with the stages"):
        Trainer(_stage(tmp_path, "combiner", "e"))


def test_two_stages_chain_from_a_pretrained_vit(world: Path, tmp_path: Path) -> None:
    vit = opencir.create_model("sum-dual-tiny")
    save_backbone(vit, tmp_path / "vit")
    pairs = DataConfig(pairs=str(world / "images.jsonl"))
    lm = train(
        _stage(tmp_path, "lm", "lm", data=pairs, vision_init=str(tmp_path / "vit")), progress=False
    )
    stage1 = train(_stage(tmp_path, "pretrain", "s1", data=pairs, init=str(lm.final)), False)
    triplets = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    stage2 = train(
        _stage(tmp_path, "cir", "s2", data=triplets, init=str(stage1.final),
               reference_negatives=True, grad_checkpointing=True),
        progress=False,
    )  # fmt: skip
    models = [opencir.load(r.final) for r in (lm, stage1, stage2)]
    for result, model in zip((lm, stage1, stage2), models, strict=True):
        assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
        assert isinstance(model, MLLMEmbedder) and not model.has_lora
    source = vit.tower.hf.vision_model.state_dict()
    for model in models:  # the ViT came from vision_init and stayed frozen through all stages
        got = model.mllm.vision_tower.state_dict()
        assert len(got) == len(source)
        assert all(torch.equal(got[k], v) for k, v in source.items())

    def q_proj(model: MLLMEmbedder) -> torch.Tensor:
        return model.language_model.layers[0].self_attn.q_proj.weight

    assert not torch.equal(q_proj(models[0]), q_proj(models[1]))  # merged adapters moved it
    assert not torch.equal(q_proj(models[1]), q_proj(models[2]))


def test_stage_two_resumes_on_the_same_loss_curve(world: Path, tmp_path: Path) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    whole = train(_stage(tmp_path, "cir", "whole", data=data, steps=4), progress=False)
    split = _stage(tmp_path, "cir", "split", data=data, steps=4)
    first = train(split, stop_at=2, progress=False)
    rest = train(split, resume="latest", progress=False)
    assert first.losses + rest.losses == whole.losses


def test_evaluates_through_the_eval_command(tmp_path: Path) -> None:
    root = make_cirr(tmp_path / "cirr")
    opencir.create_model("mllm-tiny").save(tmp_path / "ckpt")
    args = [
        "eval", "--model", str(tmp_path / "ckpt"), "--benchmark", "cirr", "--data-root",
        str(root), "--split", "val", "--out", str(tmp_path / "r.json"), "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert 0.0 <= result["metrics"]["R@1"] <= 100.0
    assert result["model_fingerprint"] == opencir.load(tmp_path / "ckpt").fingerprint()


def test_indexes_and_searches_like_any_model(tmp_path: Path) -> None:
    from opencir.index import Searcher, build_index
    from tests.test_serve_support import FAST, make_gallery

    opencir.create_model("mllm-tiny").save(tmp_path / "ckpt")
    paths = make_gallery(tmp_path / "gallery", 6)
    model = opencir.load(tmp_path / "ckpt")
    manifest = build_index(
        model, tmp_path / "gallery", tmp_path / "index", FAST, str(tmp_path / "ckpt")
    )
    searcher = Searcher.open(tmp_path / "index")
    reference = Image.open(paths[0]).convert("RGB")
    result = searcher.search("make it blue", image=reference, k=3)
    searcher.close()
    assert manifest.count == 6 and len(result.hits) == 3
    expected = model.encode_query([reference], ["make it blue"])
    gallery = model.encode_target([Image.open(p).convert("RGB") for p in paths])
    best = int((expected @ gallery.T).argmax())
    assert result.hits[0].item.path.name == Path(paths[best]).name


def test_stage_two_runs_under_bf16_autocast(world: Path, tmp_path: Path) -> None:
    data = DataConfig(triplets=(str(_triplets(world, tmp_path / "gen")),))
    result = train(_stage(tmp_path, "cir", "bf16", data=data, precision="bf16"), progress=False)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert opencir.load(result.final).mllm.language_model.layers[0].mlp.up_proj.weight.dtype == (
        torch.float32
    )  # autocast computes in bf16, the weights stay float32


def test_init_takes_prompt_settings_but_refuses_architecture_changes(tmp_path: Path) -> None:
    from opencir.train.tasks import build_model

    opencir.create_model("mllm-tiny").save(tmp_path / "mllm")
    opencir.create_model("instructcir-tiny").save(tmp_path / "s1")
    config = _stage(tmp_path, "cir", "x", init=str(tmp_path / "mllm"))
    model = build_model(dataclasses.replace(config, model_overrides={"pooling": "mean"}))
    assert model.config.mllm.pooling == "mean"
    with pytest.raises(ValueError, match="not prompt/pooling settings"):
        build_model(dataclasses.replace(config, model_overrides={"ema": False}))
    s1 = dataclasses.replace(config, init=str(tmp_path / "s1"), model_overrides={"ema": False})
    with pytest.raises(ValueError, match="cannot change a model loaded from init"):
        build_model(s1)


def test_vision_init_names_what_is_missing(tmp_path: Path) -> None:
    from opencir.models import PretrainedNotAvailableError
    from opencir.models.mllm import load_vision_encoder

    with pytest.raises(PretrainedNotAvailableError, match="no such directory"):
        load_vision_encoder(opencir.create_model("mllm-tiny"), str(tmp_path / "nope"))
    other = opencir.create_model("sum-tiny")  # same shapes as mllm-tiny's ViT, quick_gelu
    save_backbone(other, tmp_path / "clip")
    with pytest.raises(ValueError, match="hidden_act 'quick_gelu' vs 'gelu'"):
        load_vision_encoder(opencir.create_model("mllm-tiny"), str(tmp_path / "clip"))


def test_vision_init_takes_the_image_tower_of_an_opencir_checkpoint(tmp_path: Path) -> None:
    from opencir.models.registry import init_vision_encoder

    for name in ("image-only-dual-tiny", "instructcir-dual-tiny"):
        saved = opencir.create_model(name)
        saved.save(tmp_path / name)
        tower = getattr(saved, "query_encoder", saved).tower
        mllm = opencir.create_model("mllm-tiny")
        init_vision_encoder(mllm, str(tmp_path / name))
        got = mllm.mllm.vision_tower.state_dict()
        source = tower.hf.vision_model.state_dict()
        assert len(got) == len(source)
        assert all(torch.equal(got[k], v) for k, v in source.items())
        assert mllm.config.backbone.preprocess == saved.config.backbone.preprocess
    opencir.create_model("mllm-tiny").save(tmp_path / "mllm")
    with pytest.raises(ValueError, match="no dual-encoder image tower"):
        init_vision_encoder(opencir.create_model("mllm-tiny"), str(tmp_path / "mllm"))
