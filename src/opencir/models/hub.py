"""OpenCIR checkpoints on the Hugging Face Hub: repo ids, the local cache, offline mode.

``opencir.load("user/opencir-shapes-s1")`` resolves the repo id through the Hugging Face
cache with ``snapshot_download``: found in the cache, it loads without network; otherwise it
is downloaded, unless offline mode (``HF_HUB_OFFLINE=1``) is on. An existing local folder
always wins over a repo id of the same spelling, and ``./x``, ``/x``, ``~/x`` are never
repo ids.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import snapshot_download
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from opencir.models.errors import CheckpointError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OPENCIR_OFFLINE")


def offline() -> bool:
    """Whether offline mode is on now (read at call time, not at import)."""
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in OFFLINE_VARS)


def is_repo_id(text: str) -> bool:
    """``owner/name`` as the Hub spells it; anything shaped like a path is not one."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1:
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def hub_cache_dir() -> str | None:
    """The cache that ``HF_HUB_CACHE`` / ``HF_HOME`` name now (``None``: the default one).

    ``huggingface_hub`` reads these variables once, at import; reading them here lets a
    process that sets them later (a notebook, a test) still be heard.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def checkpoint_snapshot(repo_id: str) -> Path:
    """The local snapshot folder of Hub repo ``repo_id``: from the cache, else downloaded."""
    local_only = offline()
    cache = hub_cache_dir()
    try:
        folder = snapshot_download(repo_id, cache_dir=cache, local_files_only=local_only)
    except OSError as error:
        where = cache or "the default Hugging Face cache"
        how = "offline mode is on (HF_HUB_OFFLINE)" if local_only else "the download failed"
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"model {repo_id!r} is neither a local folder (no such directory "
            f"{Path(repo_id).resolve()}) nor available from the Hugging Face Hub: it is not in "
            f"{where} and {how} ({detail}). "
            f"Download it where there is network (`hf download {repo_id} "
            "--local-dir DIR`) and pass DIR, or point HF_HOME / HF_HUB_CACHE at a cache that "
            "holds it."
        ) from error
    return Path(folder)
