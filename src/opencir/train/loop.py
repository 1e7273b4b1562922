"""The trainer loop shared by every stage.

Deterministic (seeded data order and RNG), resumable from atomic checkpoints, DDP-aware,
guarded against NaN/inf, logging to CSV and TensorBoard with a progress bar.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from opencir.train.checkpointing import (
    resume_training_checkpoint,
    rng_state,
    save_training_checkpoint,
    set_rng_state,
)
from opencir.train.config import TrainConfig
from opencir.train.data import (
    PAIR_IMAGES,
    PAIR_TOKENS,
    Collate,
    MixtureSampler,
    PairDataset,
    TripletDataset,
    move_to,
)
from opencir.train.distributed import (
    DistContext,
    ddp_device_ids,
    init_distributed,
    launched_world_size,
    mean_over_ranks,
    per_rank_batch,
    resolve_device,
    shutdown,
)
from opencir.train.fixed_targets import build_candidate_table, table_embedder
from opencir.train.negatives import (
    KeyEmbedder,
    attach_hard_negatives,
    attach_pair_negatives,
    batched_embedder,
    image_key_embedder,
    triplet_parts,
)
from opencir.train.sources import build_dataset, pair_dataset
from opencir.train.stages import make_task
from opencir.train.tasks import PretrainTask, StepModule, Task
from opencir.train.text_noise import load_synonyms

log = logging.getLogger(__name__)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    out_dir: Path
    final: Path | None
    losses: list[float]
    steps_done: int


def _autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """fp32 on CPU; bf16 autocast on GPU (``precision: auto``)."""
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _split(grad: torch.Tensor | None, sizes: list[int]) -> list[torch.Tensor | None]:
    return list(grad.split(sizes)) if grad is not None else [None] * len(sizes)


def _dot(tensors: tuple[torch.Tensor, ...], grads: tuple[torch.Tensor | None, ...]) -> Any:
    """Σ ⟨tensor, grad⟩: backpropagating it sends each ``grad`` into its tensor's graph."""
    return sum(
        (t.float() * g).sum()
        for t, g in zip(tensors, grads, strict=True)
        if g is not None and t.requires_grad
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(
    named_params: list[tuple[str, nn.Parameter]], config: TrainConfig
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases/norms/scalars; ``optim.lr_scale`` per name fragment."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in named_params:
        scale = next((v for k, v in config.optim.lr_scale.items() if k in name), 1.0)
        decay = config.optim.weight_decay if param.ndim >= 2 else 0.0
        groups.setdefault((scale, decay), []).append(param)
    param_groups = [
        {"params": params, "lr": config.optim.lr * scale, "weight_decay": decay}
        for (scale, decay), params in groups.items()
    ]
    kwargs = {"lr": config.optim.lr, "betas": config.optim.betas, "eps": config.optim.eps}
    try:
        return torch.optim.AdamW(param_groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(param_groups, foreach=True, **kwargs)


def clip_gradients(
    params: list[nn.Parameter], max_norm: float, optimizer: torch.optim.Optimizer
) -> torch.Tensor:
    """Clip the global gradient norm to ``max_norm``; return the norm before clipping.

    Same result as ``clip_grad_norm_``. A fused optimizer takes the clip factor as its
    ``grad_scale`` (the hook ``GradScaler`` uses to unscale inside the fused kernel), so the
    gradients are scaled within the optimizer's own single pass over them instead of in an
    extra read-modify-write pass: the update is memory-bound on large models.
    """
    grads = [p.grad for p in params if p.grad is not None]
    total = nn.utils.get_total_norm(grads, norm_type=2.0)
    if getattr(optimizer, "_step_supports_amp_scaling", False):
        # clip_grad_norm_ multiplies by min(1, max_norm / (norm + 1e-6)); divide by its inverse
        optimizer.grad_scale = torch.clamp((total.float() + 1e-6) / max_norm, min=1.0)
    else:
        nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio`` (or constant)."""
    optim = config.optim
    if step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    progress = (step - optim.warmup_steps) / max(1, config.steps - optim.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine


class MetricLog:
    """``metrics.csv`` (rewritten up to the resume step) and optional TensorBoard."""

    FIELDS = ("step", "loss", "lr", "samples_per_s", "elapsed_s")

    def __init__(self, out_dir: Path, start_step: int, tensorboard: bool) -> None:
        self.path = out_dir / "metrics.csv"
        kept = self._rows_before(start_step)
        self.handle = self.path.open("w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.FIELDS)
        self.writer.writeheader()
        self.writer.writerows(kept)
        self.board = _summary_writer(out_dir / "tensorboard") if tensorboard else None

    def _rows_before(self, step: int) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            return [row for row in csv.DictReader(handle) if int(row["step"]) <= step]

    def write(self, row: dict[str, float]) -> None:
        self.writer.writerow(row)
        self.handle.flush()
        if self.board is not None:
            for key in ("loss", "lr", "samples_per_s"):
                self.board.add_scalar(f"train/{key}", row[key], int(row["step"]))

    def close(self) -> None:
        self.handle.close()
        if self.board is not None:
            self.board.close()


def _summary_writer(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed; logging to metrics.csv only")
        return None
    return SummaryWriter(str(path))


class Trainer:
    """Holds the pieces of one run; :meth:`run` performs the optimisation steps."""

    def __init__(self, config: TrainConfig, resume: str | None = None) -> None:
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.device = resolve_device(config.device)
        # checked on every rank before the process group exists: nothing can hang on it
        self.local_batch = per_rank_batch(
            config.batch_size, launched_world_size(), config.grad_accum
        )
        self.ctx: DistContext = init_distributed(self.device)
        _seed_everything(config.seed + self.ctx.rank)
        self.task: Task = make_task(config)
        self.model = self.task.model.to(self.device).train()
        self.model.set_gradient_checkpointing(config.grad_checkpointing)
        self.params = self._freeze_all_but(self.task.trainable_parameters())
        names = {id(p): n for n, p in self.model.named_parameters()}
        self.optimizer = build_optimizer([(names[id(p)], p) for p in self.params], config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config)
        )
        self.step = 0
        if resume:
            self._resume(resume)
        self.step_module = self._wrap(StepModule(self.task))

    def _freeze_all_but(self, params: list[nn.Parameter]) -> list[nn.Parameter]:
        frozen = {
            id(p)
            for name, p in self.model.named_parameters()
            if any(fragment in name for fragment in self.config.freeze)
        }
        params = [p for p in params if id(p) not in frozen]
        if not params:
            raise ValueError(f"freeze={list(self.config.freeze)} leaves nothing to train")
        wanted = {id(p) for p in params}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in wanted)
        return params

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.ctx.enabled:
            return module
        return nn.parallel.DistributedDataParallel(module, device_ids=ddp_device_ids(self.device))

    def _resume(self, which: str) -> None:
        path, state = resume_training_checkpoint(
            self.out_dir / "checkpoints", which, self.model, self.config.to_dict()
        )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["step"]
        self._restore_rng(state["rng"])
        log.info("resumed from %s at step %d", path, self.step)

    def _restore_rng(self, states: list[dict[str, Any]]) -> None:
        """Rank r takes the state rank r saved; on another world size every rank re-seeds.

        Data order does not depend on the world size, so such a resume sees the same batches;
        only random draws inside the model (dropout) differ from an unbroken run.
        """
        rank, world = self.ctx.rank, self.ctx.world_size
        if len(states) == world:
            set_rng_state(states[rank])
            return
        if self.ctx.is_main:
            log.warning(
                "the checkpoint was written by %d rank(s) and resumes on %d: every rank's RNG "
                "is re-seeded from (seed, step, rank), so dropout masks differ from an "
                "uninterrupted run (the data order does not)",
                len(states),
                world,
            )
        _seed_everything(random.Random(f"{self.config.seed}-{self.step}-{rank}").getrandbits(32))

    def _loader(self, progress: bool = False) -> Iterator[dict[str, Any]]:
        config = self.config
        dataset, n_generated, n_labelled = build_dataset(config)
        self._prepare_candidates(dataset, progress)
        batches = self._batches(dataset, n_generated, n_labelled, config.data.labelled_ratio)
        if not config.pair_loss_weight:
            return batches
        pairs = pair_dataset(config)
        pair_batches = self._batches(pairs, len(pairs), 0, 0.0, seed_offset=1)
        return (
            {**batch, PAIR_IMAGES: pair["image"], PAIR_TOKENS: pair["tokens"]}
            for batch, pair in zip(batches, pair_batches, strict=False)
        )

    def _batches(
        self, dataset: Dataset, n_generated: int, n_labelled: int, ratio: float,
        seed_offset: int = 0,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """This rank's micro-batches of ``dataset``: one global batch per optimizer step,
        in ``grad_accum`` pieces, a pure function of the seed and the step."""
        config, ctx = self.config, self.ctx
        seed = config.seed + seed_offset
        sampler = MixtureSampler(
            n_generated,
            n_labelled,
            config.batch_size,
            ratio,
            seed,
            total_batches=config.steps,
            start_batch=self.step,
            rank=ctx.rank,
            world=ctx.world_size,
        )
        collate = Collate(
            self.model.image_preprocessor(),
            self.task.text_tokenizer(),
            word_dropout=config.data.word_dropout,
            seed=seed,
            synonyms=load_synonyms(config.data.synonyms) if config.data.synonyms else None,
            synonym_rate=config.data.synonym_rate,
        )
        return iter(
            DataLoader(
                dataset,
                batch_size=self.local_batch,
                sampler=sampler,
                collate_fn=collate,
                num_workers=config.data.workers,
                drop_last=True,
                persistent_workers=config.data.workers > 0,
                # its own generator: creating the iterator must not draw from the global RNG,
                # or a resumed run would see different dropout masks than an unbroken one
                generator=torch.Generator().manual_seed(seed),
            )
        )

    def _prepare_candidates(self, dataset: Dataset, progress: bool) -> None:
        """Before the first step, with the model as it is now (in eval mode): the table of
        fixed target embeddings when the task has one, then the mined hard negatives — each
        triplet's nearest images by the target encoder (in pretraining, each pair's nearest
        captions by the text encoder)."""
        count, run_dir = self.config.hard_negatives, self.out_dir
        if not (count or self.task.caches_candidates()):
            return
        self.model.eval()
        try:
            if isinstance(dataset, PairDataset):
                attach_pair_negatives(dataset, self._caption_embedder(progress), count, run_dir)
                return
            embedder = self._image_embedder(progress)
            if self.task.caches_candidates():
                table = build_candidate_table(triplet_parts(dataset), embedder)
                self.task.candidate_table = table.to(self.device)
                embedder = table_embedder(table)
            if count:
                attach_hard_negatives(dataset, embedder, count, run_dir)
        finally:
            self.model.train()

    def _caption_embedder(self, progress: bool) -> KeyEmbedder:
        task = self.task
        if not isinstance(task, PretrainTask):
            raise ValueError(
                f"hard_negatives in the pretrain stage needs a dual-encoder model, not "
                f"{self.config.model!r}"
            )
        return batched_embedder(lambda c: task.encode_captions(c, self.device), 256, progress)

    def _image_embedder(self, progress: bool) -> Callable[[TripletDataset], KeyEmbedder]:
        preprocess = self.model.image_preprocessor()

        def encode(images: list) -> torch.Tensor:
            return self.model.forward_target(preprocess(images).to(self.device))

        return lambda part: image_key_embedder(
            encode, part.load_image, progress=progress, desc="embedding training images"
        )

    def _loss(self, outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, float]:
        """This rank's loss and the whole batch's: the mean over the ranks.

        Judged on the mean, a NaN on one rank stops every rank at the same point instead of
        leaving the others waiting in the next collective.
        """
        loss = self.task.loss(tuple(o.float() for o in outputs), self.ctx)
        value = mean_over_ranks(loss.item(), self.ctx)
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"loss became {value} at step {self.step + 1}; try a lower optim.lr, "
                f"a larger temperature, or resume from an earlier checkpoint in "
                f"{self.out_dir / 'checkpoints'}"
            )
        return loss, value

    def _backward(self, batches: list[dict[str, Any]]) -> float:
        """Gradients of the loss over this step's whole batch; returns that loss."""
        if len(batches) > 1:
            return self._backward_cached(batches)
        with _autocast(self.config, self.device):
            loss, value = self._loss(self.step_module(batches[0]))
        loss.backward()
        return value

    def _backward_cached(self, batches: list[dict[str, Any]]) -> float:
        """Gradient accumulation that keeps the full-batch loss (the GradCache method).

        An in-batch contrastive loss couples every example with every other, so a sum of
        per-micro-batch losses would be another (smaller-batch) objective. Instead: embed
        every micro-batch and keep only the embeddings, take the loss over all of them and
        its gradient w.r.t. them (and w.r.t. parameters the loss uses itself, like a logit
        scale), then re-run each micro-batch under the RNG state of its first pass (same
        dropout masks) and backpropagate the cached gradients. The gradients equal those of
        one batch of the whole size; memory is one micro-batch's graph, the price one extra
        forward per micro-batch.
        """
        states, parts = self._first_pass(batches)
        embeddings = tuple(torch.cat(col).requires_grad_() for col in zip(*parts, strict=True))
        with _autocast(self.config, self.device):
            loss, value = self._loss(embeddings)
        grads = torch.autograd.grad(loss, [*embeddings, *self.params], allow_unused=True)
        # per output column: its rows in each micro-batch (columns may differ in length)
        sizes = [[len(part[column]) for part in parts] for column in range(len(embeddings))]
        per_batch = zip(
            *(_split(g, s) for g, s in zip(grads[: len(embeddings)], sizes, strict=True)),
            strict=True,
        )
        for i, (batch, state, cached) in enumerate(zip(batches, states, per_batch, strict=True)):
            last = i == len(batches) - 1
            set_rng_state(state)
            with self._gradient_sync(last), _autocast(self.config, self.device):
                surrogate = _dot(self.step_module(batch), cached)
                if last:  # parameters the loss uses itself: once, in the synchronising pass
                    surrogate = surrogate + _dot(tuple(self.params), grads[len(embeddings) :])
            surrogate.backward()
        return value

    def _first_pass(self, batches: list[dict[str, Any]]) -> tuple[list, list]:
        """Each micro-batch's embeddings (fp32, detached) and the RNG state it started from.

        Autograd stays on (each graph is dropped at once): without it models take other
        paths (InstructCIR reuses its null-text features instead of re-encoding them), so
        the RNG would draw other dropout masks than in the re-run.
        """
        states, parts = [], []
        with _autocast(self.config, self.device):
            for batch in batches:
                states.append(rng_state())
                parts.append(tuple(o.detach().float() for o in self.task.embeddings(batch)))
        return states, parts

    def _gradient_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        """DDP averages gradients only in the last backward of a step."""
        no_sync = getattr(self.step_module, "no_sync", None)
        return no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()

    def _optimizer_step(self) -> None:
        if self.config.optim.grad_clip:
            clip_gradients(self.params, self.config.optim.grad_clip, self.optimizer)
        self.optimizer.step()
        # Fused AdamW writes the weights in place without bumping their version counters;
        # caches keyed on (storage, version), like the models' packed oneDNN weights for
        # no-grad forwards, would keep serving the weights of before this step.
        torch.autograd.graph.increment_version(self.params)
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.task.after_step()
        self.step += 1

    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG state (rank r resumes with entry r)."""
        if not self.ctx.enabled:
            return [rng_state()]
        states: list[Any] = [None] * self.ctx.world_size
        torch.distributed.all_gather_object(states, rng_state())
        return states

    def _save(self) -> None:
        rng = self._rng_states()
        if self.ctx.is_main:
            state = {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng,
                "config": self.config.to_dict(),
            }
            keep = self.config.keep_checkpoints
            save_training_checkpoint(
                self.out_dir / "checkpoints", self.step, self.model, state, keep
            )
        if self.ctx.enabled:
            torch.distributed.barrier()

    def run(self, stop_at: int | None = None, progress: bool = True) -> TrainResult:
        """Train until ``config.steps`` (or ``stop_at``, to split a run into chunks)."""
        config = self.config
        end = min(config.steps, stop_at or config.steps)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.ctx.is_main:
            (self.out_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict()))
        metrics = (
            MetricLog(self.out_dir, self.step, config.tensorboard) if self.ctx.is_main else None
        )
        batches = self._loader(progress and self.ctx.is_main)
        losses: list[float] = []
        bar = tqdm(
            total=end,
            initial=self.step,
            disable=not (progress and self.ctx.is_main),
            desc=f"train:{config.stage}",
            unit="step",
        )
        started, samples = time.perf_counter(), 0
        try:
            while self.step < end:
                micro = [move_to(next(batches), self.device) for _ in range(config.grad_accum)]
                loss = self._backward(micro)
                self._optimizer_step()
                losses.append(loss)
                samples += config.batch_size
                rate = samples / max(1e-9, time.perf_counter() - started)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{rate:.1f}")
                if metrics is not None and (self.step % config.log_every == 0 or self.step == end):
                    metrics.write(
                        {
                            "step": self.step,
                            "loss": loss,
                            "lr": self.scheduler.get_last_lr()[0],
                            "samples_per_s": rate,
                            "elapsed_s": time.perf_counter() - started,
                        }
                    )
                if self.step % config.checkpoint_every == 0 or self.step == end:
                    self._save()
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        final = None
        if self.step >= config.steps and self.ctx.is_main:
            final = self.task.export(self.out_dir)
        return TrainResult(self.out_dir, final, losses, self.step)


def train(
    config: TrainConfig,
    resume: str | None = None,
    stop_at: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Run one training stage end to end (see :class:`TrainConfig`)."""
    trainer = Trainer(config, resume=resume)
    try:
        return trainer.run(stop_at=stop_at, progress=progress)
    finally:
        shutdown(trainer.ctx)


__all__ = ["TrainResult", "Trainer", "TrainingDivergedError", "train"]
