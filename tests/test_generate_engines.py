"""The other engines and backends: Ray Data vs in-process, a local Hugging Face captioner."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from opencir.data.collections import CollectionSpec
from opencir.data.triplets import read_triplets
from opencir.generate import CaptionerConfig, EndpointConfig, GenerateConfig, WriterConfig, generate
from opencir.generate.captioners import HFCaptioner
from opencir.generate.jobs import ImageJob
from tests.fake_llm_server import FakeLLMServer
from tests.generate_fixtures import make_world


def tiny_captioner(directory: Path) -> Path:
    """A random-weight ViT → GPT-2 captioner saved like a hub model (processor + tokenizer)."""
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    from opencir.models.tokenizer import byte_level_tokenizer

    tokenizer = byte_level_tokenizer(32)
    encoder = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    decoder = GPT2Config(
        n_embd=32,
        n_layer=1,
        n_head=2,
        vocab_size=len(tokenizer),
        n_positions=64,
        add_cross_attention=True,
        is_decoder=True,
        **ids,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = tokenizer.bos_token_id
    config.pad_token_id, config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    model = VisionEncoderDecoderModel(config)
    model.generation_config.decoder_start_token_id = tokenizer.bos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def test_hf_captioner_loads_a_saved_model_and_captions(tmp_path: Path) -> None:
    folder = tiny_captioner(tmp_path / "captioner")
    config = CaptionerConfig(kind="hf", hf_model=str(folder), max_new_tokens=6, batch_size=2)
    captioner = HFCaptioner(config)
    images = [Image.new("RGB", (40 + i, 30), (50 * i, 0, 0)) for i in range(3)]
    jobs = [ImageJob(str(i), image=im, sha=str(i)) for i, im in enumerate(images)]
    outcomes = asyncio.run(captioner.caption_many(jobs))
    assert len(outcomes) == 3
    assert all(o.status in ("ok", "failed") for o in outcomes)
    assert all(isinstance(o.text, str) and o.text for o in outcomes if o.status == "ok")
    world = make_world(tmp_path / "world", n_train=6, n_test=0)
    run = GenerateConfig(
        source=CollectionSpec(str(world)),
        out=str(tmp_path / "out"),
        pairs=5,
        captioner=config,
        progress=False,
    )
    report = generate(run)
    assert report.pairs == 5 == report.triplets  # the template writer uses attributes here
    for triplet in read_triplets(tmp_path / "out"):
        assert triplet.provenance["captioner"]["kind"] == "hf"
        assert triplet.provenance["captioner"]["model"] == str(folder)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray's own deprecations
def test_ray_data_engine_matches_in_process(tmp_path: Path) -> None:
    pytest.importorskip("ray.data")
    world = make_world(tmp_path / "world", n_train=10, n_test=0, corrupt=1)
    with FakeLLMServer() as server:
        endpoint = EndpointConfig(model="fake", base_url=server.url, backoff_s=0.01)
        config = GenerateConfig(
            source=CollectionSpec(str(world)),
            out=str(tmp_path / "local"),
            pairs=20,
            shard_size=4,
            captioner=CaptionerConfig(kind="openai", endpoint=endpoint),
            writer=WriterConfig(kind="llm", endpoint=endpoint),
            progress=False,
        )
        local = generate(config)
        ray_config = replace(config, out=str(tmp_path / "ray"), engine="ray", ray_workers=2)
        distributed = generate(ray_config)
    expected = [t.to_row() for t in read_triplets(tmp_path / "local")]
    assert [t.to_row() for t in read_triplets(tmp_path / "ray")] == expected
    assert (tmp_path / "ray" / "failures.jsonl").read_text() == (
        tmp_path / "local" / "failures.jsonl"
    ).read_text()
    assert distributed.triplets == local.triplets > 0 and distributed.run["engine"] == "ray"
