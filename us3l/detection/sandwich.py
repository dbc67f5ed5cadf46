"""The sandwich rule for fine-tuning ONE detector at every width, written once for every framework.

Each iteration trains the max width, ``num_random`` widths drawn uniformly in between, and the min width;
each width's supervised losses are back-propagated separately (gradients accumulate: the activation memory
of one width at a time), then the framework makes ONE optimizer step.

Width draws are a pure function of ``(seed, iteration)``: every DDP rank trains the same widths without
communication, and a resumed run draws exactly the widths the interrupted one would have. The seed comes
from the framework's seeding (Detectron2 ``cfg.SEED``, mmengine ``randomness.seed``) via
:func:`resolve_seed`.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn

from ..ops import DEFAULT_WIDTH_RANGE
from ..ops.width_state import canonical_width, check_width_range
from ..width import set_width


@dataclasses.dataclass(frozen=True)
class SandwichConfig:
    """What one sandwich iteration trains.

    ``num_random``: random widths between min and max per iteration (0: only max and min).
    ``distill``: inplace distillation of the max width's RPN objectness and box classification into every
    smaller width (see :mod:`us3l.detection.distill`), weighted by ``distill_weight``.
    ``seed``: base of the per-iteration width draws (``None`` -> 0; frameworks pass their own seed).
    """

    width_range: tuple[float, float] = DEFAULT_WIDTH_RANGE
    num_random: int = 2
    distill: bool = False
    distill_weight: float = 1.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "width_range", check_width_range(self.width_range))
        if int(self.num_random) != self.num_random or self.num_random < 0:
            raise ValueError(f"the number of random widths must be a non-negative integer, got {self.num_random}")
        if self.distill_weight < 0:
            raise ValueError(f"distill_weight must be >= 0, got {self.distill_weight}")


def resolve_seed(seed: int | None) -> int:
    """A framework seed (negative / None = "random") -> the seed of the width draws.

    A random seed is drawn from torch's global RNG and, when distributed, broadcast from rank 0 so that
    every rank trains the same widths.
    """
    if seed is not None and seed >= 0:
        return int(seed)
    value = torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.broadcast(value, 0)
    return int(value.item())


def sample_widths(config: SandwichConfig, iteration: int) -> list[float]:
    """``[max, random..., min]`` for ``iteration`` (canonical 3-decimal widths, max first).

    The max width comes first so that its outputs can teach the others (inplace distillation).
    With ``width_range`` collapsed to one width, that width is trained once.
    """
    lo, hi = config.width_range
    if lo == hi:
        return [canonical_width(hi)]
    g = torch.Generator().manual_seed((int(config.seed) * 1_000_003 + int(iteration)) % (2**63 - 1))
    draws = (lo + (hi - lo) * torch.rand(int(config.num_random), generator=g, dtype=torch.float64)).tolist()
    return [canonical_width(hi)] + sorted((canonical_width(w) for w in draws), reverse=True) + [canonical_width(lo)]


def width_tags(widths: Sequence[float]) -> list[str]:
    """Names of the sandwich slots for logging: ``max``, ``rand1``..., ``min`` (random widths vary per step)."""
    if len(widths) == 1:
        return ["max"]
    return ["max"] + [f"rand{i}" for i in range(1, len(widths) - 1)] + ["min"]


def sandwich_step(model: nn.Module, widths: Sequence[float],
                  loss_at_width: Callable[[float, int], Mapping[str, torch.Tensor]],
                  backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward(),
                  slimmable: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Run ``loss_at_width(width, index)`` at every width, back-propagate each width's summed losses.

    ``model``: the module the framework trains (possibly a ``DistributedDataParallel``): all backward passes
    but the last run under its ``no_sync()``, so gradients are all-reduced once, already summed over widths.
    ``slimmable``: where the width is set (default: ``model.module`` or ``model``).
    ``backward``: how to back-propagate (AMP: ``lambda l: scaler.scale(l).backward()``).
    The caller zeroes gradients before and steps the optimizer after: one step per iteration.
    Returns the detached losses keyed ``"<loss name>/<slot>"`` (slots from :func:`width_tags`), whose sum is
    the total that was back-propagated. The model is left at the max width.
    """
    if not widths:
        raise ValueError("a sandwich step needs at least one width")
    target = slimmable if slimmable is not None else getattr(model, "module", model)
    no_sync = getattr(model, "no_sync", None)
    logged: dict[str, torch.Tensor] = {}
    try:
        for i, (w, tag) in enumerate(zip(widths, width_tags(widths))):
            set_width(target, w)
            sync = i == len(widths) - 1 or no_sync is None
            with contextlib.nullcontext() if sync else no_sync():
                losses = loss_at_width(w, i)
                if not losses:
                    raise ValueError(f"the loss function returned no losses at width {w}")
                total = sum(losses.values())
                if not torch.isfinite(total).all():
                    raise FloatingPointError(f"loss became {total.item()} at width {w} "
                                             f"({ {k: float(v.detach()) for k, v in losses.items()} })")
                backward(total)
            for name, value in losses.items():
                logged[f"{name}/{tag}"] = value.detach()
    finally:
        set_width(target, widths[0])
    return logged
