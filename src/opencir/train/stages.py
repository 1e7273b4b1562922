"""Which task object runs a training stage, for the model the recipe names.

Dual-encoder models (S1 and the baselines) train with the tasks of :mod:`opencir.train.tasks`;
``mllm-*`` models (S2) with those of :mod:`opencir.train.mllm_tasks`. Both modules share
the :class:`~opencir.train.tasks.Task` base, so the choice lives here, above both.
"""

from __future__ import annotations

from opencir.models.mllm import MLLMEmbedder
from opencir.train.config import TrainConfig
from opencir.train.mllm_tasks import MLLM_TASKS
from opencir.train.tasks import TASKS, Task, build_model
from opencir.train.writer_tasks import WriterTask


def make_task(config: TrainConfig) -> Task:
    """Build the recipe's model and the task that trains it in ``config.stage``."""
    if config.stage == "writer":  # a chat LM from a directory or GGUF, not a registry model
        return WriterTask.from_config(config)
    model = build_model(config)
    if isinstance(model, MLLMEmbedder):
        if config.stage not in MLLM_TASKS:
            raise ValueError(
                f"stage {config.stage!r} does not apply to {model.config.name}; "
                f"mllm-* models train with the stages {list(MLLM_TASKS)}"
            )
        return MLLM_TASKS[config.stage](config, model)
    if config.stage not in TASKS:
        raise ValueError(f"stage {config.stage!r} only applies to mllm-* models")
    return TASKS[config.stage](config, model)
