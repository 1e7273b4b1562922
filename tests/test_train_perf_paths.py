"""The trainer's fast update paths equal the plain ones (clip, then AdamW, then EMA)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from opencir.train.config import OptimConfig, TrainConfig
from opencir.train.loop import Trainer, build_optimizer, clip_gradients, lr_factor


def _params(seed: int) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(6, 5), (5,), (3, 6)]
    return [nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]


def _set_grads(params: list[nn.Parameter], scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=generator)


@pytest.mark.parametrize("fused", [True, False])
def test_clip_gradients_equals_clip_grad_norm_then_adamw(fused: bool) -> None:
    ours, reference = _params(0), _params(0)
    kwargs = {"lr": 1e-2, "weight_decay": 0.1}
    ours_opt = torch.optim.AdamW(ours, fused=fused, foreach=None if fused else True, **kwargs)
    reference_opt = torch.optim.AdamW(reference, foreach=True, **kwargs)
    for step, scale in enumerate([10.0, 0.01, 3.0]):  # clipped, not clipped, clipped
        _set_grads(ours, scale, step)
        _set_grads(reference, scale, step)
        norm = clip_gradients(ours, 1.0, ours_opt)
        reference_norm = nn.utils.clip_grad_norm_(reference, 1.0)
        torch.testing.assert_close(norm, reference_norm)
        ours_opt.step()
        reference_opt.step()
        for a, b in zip(ours, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def _trainer(tmp_path: Path) -> Trainer:
    config = TrainConfig(
        stage="cir",
        model="instructcir-tiny",
        out_dir=str(tmp_path),
        batch_size=3,
        device="cpu",
        tensorboard=False,
        model_overrides={"ema_momentum": 0.9},
        optim=OptimConfig(lr=1e-2, warmup_steps=2, grad_clip=0.05),
    )
    return Trainer(config)


def _batch(trainer: Trainer) -> dict:
    generator = torch.Generator().manual_seed(1)
    texts = ["make it blue", "add a star", "turn it over"]
    return {
        "reference": torch.randn(3, 3, 32, 32, generator=generator),
        "target": torch.randn(3, 3, 32, 32, generator=generator),
        "tokens": trainer.model.text_tokenizer()(texts),
    }


def test_trainer_step_equals_clip_adamw_ema_done_by_hand(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    model, config = trainer.model, trainer.config
    names = {id(p): n for n, p in model.named_parameters()}
    trainer._backward([_batch(trainer)])
    # the reference: copies of the trained weights with their gradients, updated the plain way
    copies = [nn.Parameter(p.detach().clone()) for p in trainer.params]
    for copy_, p in zip(copies, trainer.params, strict=True):
        copy_.grad = p.grad.clone()
    named = [(names[id(p)], c) for p, c in zip(trainer.params, copies, strict=True)]
    reference = build_optimizer(named, config)
    torch.optim.lr_scheduler.LambdaLR(reference, lambda step: lr_factor(step, config))
    target_before = copy.deepcopy(model.target_encoder)
    norm = nn.utils.clip_grad_norm_(copies, config.optim.grad_clip)
    assert norm > config.optim.grad_clip  # the step really clips
    reference.step()
    trainer._optimizer_step()
    for p, c in zip(trainer.params, copies, strict=True):
        torch.testing.assert_close(p, c, rtol=1e-5, atol=1e-6)
        assert p.grad is None
    online = dict(model.query_encoder.named_parameters())
    for name, value in model.target_encoder.named_parameters():
        before = dict(target_before.named_parameters())[name]
        expected = 0.9 * before + 0.1 * online[name] if online[name].requires_grad else before
        torch.testing.assert_close(value, expected)


def test_no_grad_forwards_after_a_step_see_the_new_weights(tmp_path: Path) -> None:
    """Fused AdamW does not bump version counters; the trainer does, for version-keyed caches."""
    trainer = _trainer(tmp_path)
    batch = _batch(trainer)
    with torch.no_grad():
        before = trainer.task.embeddings(batch)[0]  # fills the no-grad caches (packed weights)
    trainer._backward([batch])
    trainer._optimizer_step()
    with torch.no_grad():
        after = trainer.task.embeddings(batch)[0]
    recomputed = trainer.task.embeddings(batch)[0].detach()  # with autograd: no cache
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, recomputed, rtol=1e-5, atol=1e-6)
