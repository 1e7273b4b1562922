"""Errors shared by the checkpoint modules (kept apart so every module can raise them)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint is missing or its files or tensors do not match its config."""
