"""Models from outside OpenCIR, named ``MODULE:FACTORY`` (as ``uvicorn app:create``).

Any object with ``encode_query(images, texts)`` and ``encode_target(images)`` can be
evaluated, indexed or served (:class:`~opencir.models.base.Retriever`). On the command line
such a model is named by an importable module and a factory in it; the factory is called
with no arguments, or with the ``pretrained`` string when one is given.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

from opencir.models.base import Retriever

# ``pkg.module:factory`` or ``module:Class.create``: dotted identifiers on both sides.
_DOTTED = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
FACTORY_SPEC = re.compile(rf"^(?P<module>{_DOTTED}):(?P<attr>{_DOTTED})$")
REQUIRED_METHODS = ("encode_query", "encode_target")


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` reads as ``MODULE:FACTORY`` (and is not an existing path)."""
    return bool(FACTORY_SPEC.match(spec)) and not Path(spec).exists()


def load_factory_model(spec: str, pretrained: str | None = None) -> Retriever:
    """Import ``MODULE``, call ``FACTORY()`` (or ``FACTORY(pretrained)``), check the result."""
    match = FACTORY_SPEC.match(spec)
    if match is None:
        raise ValueError(
            f"model {spec!r} is not MODULE:FACTORY; expected e.g. my_models:build_retriever"
        )
    factory = _resolve(spec, match["module"], match["attr"])
    model = factory() if pretrained is None else factory(pretrained)
    missing = [name for name in REQUIRED_METHODS if not callable(getattr(model, name, None))]
    if missing:
        raise ValueError(
            f"model {spec!r}: the factory returned a {type(model).__name__} without "
            f"{' and '.join(missing)}; expected an object with encode_query(images, texts) "
            "and encode_target(images) returning [N, D] tensors"
        )
    return model


def _resolve(spec: str, module_name: str, attr_path: str) -> Any:
    try:
        obj = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(
            f"model {spec!r}: cannot import module {module_name!r} ({error}); expected a module "
            "importable from the current directory or PYTHONPATH"
        ) from error
    for name in attr_path.split("."):
        if not hasattr(obj, name):
            raise ValueError(
                f"model {spec!r}: module {module_name!r} has no attribute {attr_path!r}; "
                "expected a factory function or class there"
            )
        obj = getattr(obj, name)
    if not callable(obj):
        raise ValueError(
            f"model {spec!r}: {attr_path!r} is a {type(obj).__name__}, not callable; "
            "expected a factory function or class"
        )
    return obj
