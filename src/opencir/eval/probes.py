"""Linear probes: what a frozen feature says, read off by multinomial logistic regression."""

from __future__ import annotations

import torch


def fit_linear_probe(
    x: torch.Tensor, y: torch.Tensor, classes: int | None = None, l2: float = 1e-2
) -> torch.nn.Linear:
    """Multinomial logistic regression of labels ``y`` ``[N]`` on features ``x`` ``[N, F]``
    (standardise them first), fitted by L-BFGS with an L2 penalty on the weights; ``classes``
    defaults to ``y.max() + 1``. Deterministic: the same data give the same probe."""
    torch.manual_seed(0)
    probe = torch.nn.Linear(x.shape[1], classes or int(y.max()) + 1)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(probe(x), y) + l2 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return probe
