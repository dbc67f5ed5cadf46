"""Prefix slices ``weight[:rows, :cols]`` of a slimmable layer's weight, cheap with and without autograd.

A prefix of rows is a view. A prefix of columns is strided: the oneDNN convolution copies such a weight to
a contiguous layout on every call (forward and backward), so:

* with autograd, :func:`prefix_slice` hands the kernel one contiguous copy and writes the gradient into a
  full-size tensor in one pass (plain indexing slices one dimension at a time, and the backward of each
  slice allocates and zero-fills a tensor of its input's size);
* without autograd (inference, BN calibration, a frozen layer) each layer keeps the contiguous copies of
  its last few widths (:class:`SliceCache`: up to ``capacity`` widths, 4 by default, and never more bytes
  than the layer's full weight), and reuses them while the weight is unchanged: a model whose width changes
  every call, within those widths, runs at its fixed-width speed (``bench/width_switch.md``).

"Unchanged" means: the same tensor, storage, dtype and version counter (every in-place update through
autograd-visible ops bumps it: optimizer steps, ``load_state_dict``, EMA updates), no optimizer step
anywhere since (fused optimizers do not bump version counters), and no ``train()``/``eval()``/``to()``
call on the layer since. Writes through ``tensor.data`` are invisible to all of these; after such a
write call :func:`us3l.inference.clear_cache` (or ``model.eval()``).
"""
from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

_optimizer_steps = 0  # bumped by every optimizer step in the process, once a cache exists
_step_hook = None


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def _watch_optimizer_steps() -> None:
    global _step_hook
    if _step_hook is None:
        _step_hook = register_optimizer_step_post_hook(_count_optimizer_step)


class _PrefixSlice(torch.autograd.Function):
    """``weight[:rows, :cols]`` as a contiguous tensor; its gradient is written once into a full-size one."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        ctx.full_shape = weight.shape
        return weight[:rows, :cols].contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, cols = grad.shape[:2]
        full = grad.new_empty(ctx.full_shape)
        full[rows:].zero_()
        full[:rows, cols:].zero_()
        full[:rows, :cols].copy_(grad)
        return full, None, None


def grad_free(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """True when this forward records no gradient for the layer (inference, calibration, frozen layers) and
    is not being traced (a trace must record the slicing, not bake in a tensor from an earlier call)."""
    if torch.jit.is_tracing():
        return False
    return not torch.is_grad_enabled() or not (weight.requires_grad or (bias is not None and bias.requires_grad))


def unchanged_key(weight: torch.Tensor, *others) -> tuple:
    """What must stay equal for grad-free cache entries to stay valid (see the module docstring)."""
    return (id(weight), weight.data_ptr(), weight._version, _optimizer_steps, torch.is_inference_mode_enabled(),
            *map(id, others))


DEFAULT_WIDTHS_KEPT = 4  # the widths of the usual table (1.0, 0.75, 0.5, 0.25); 1.0 itself costs no copy


class SliceCache:
    """One layer's grad-free tensors for its most recently used widths (tuples), least recent dropped first.

    Entries are valid while ``validity`` (the weight's identity, version, optimizer steps, inference mode:
    :func:`unchanged_key`) is what it was when they were made; any change drops them all. At most
    ``capacity`` entries, and the copies together never exceed ``budget`` bytes (the layer's full weight:
    the extra memory of a model is at most that of its full-width weights).
    """

    __slots__ = ("entries", "validity", "capacity")

    def __init__(self, capacity: int = DEFAULT_WIDTHS_KEPT):
        self.capacity = int(capacity)
        self.clear()

    def __reduce__(self):  # copies and pickles of a model start empty (the key names the original's tensors)
        return SliceCache, (self.capacity,)

    def clear(self) -> None:
        self.entries: dict = {}  # key -> (value, copied bytes), least recently used first
        self.validity = None

    @property
    def value(self):
        """The most recently used entry's tensors (None when empty)."""
        return next(reversed(self.entries.values()))[0] if self.entries else None

    def nbytes(self) -> int:
        """Bytes of weight copies held (views of the layer's own tensors cost nothing)."""
        return sum(b for _, b in self.entries.values())

    def _revalidate(self, validity) -> None:
        if validity != self.validity:  # the weights changed: every entry is stale
            self.entries.clear()
            self.validity = validity

    def _evict(self, budget: int | None = None) -> None:
        """Drop least recent entries beyond ``capacity`` (and beyond ``budget`` bytes); the newest stays."""
        while len(self.entries) > 1 and (len(self.entries) > self.capacity
                                         or (budget is not None and self.nbytes() > budget)):
            del self.entries[next(iter(self.entries))]

    def set_capacity(self, k: int) -> None:
        self.capacity = int(k)
        self._evict()

    def get(self, key, validity):
        self._revalidate(validity)
        hit = self.entries.pop(key, None)
        if hit is None:
            return None
        self.entries[key] = hit  # now the most recent
        return hit[0]

    def put(self, key, validity, value: tuple, copied: int, budget: int) -> tuple:
        _watch_optimizer_steps()
        self._revalidate(validity)
        self.entries[key] = (value, copied)
        self._evict(budget)
        return value

    def weight_slices(self, width: float, weight: torch.Tensor, bias: torch.Tensor | None, make) -> tuple:
        """``make()`` (a tuple whose first item is the sliced ``weight``): made afresh whenever autograd records
        the layer, else reused while :func:`unchanged_key` holds (what conv and linear layers share)."""
        if not grad_free(weight, bias):
            return make()
        validity = unchanged_key(weight, bias)
        hit = self.get(width, validity)
        if hit is not None:
            return hit
        value = make()
        return self.put(width, validity, value, copied_bytes(weight, value[0]),
                        weight.numel() * weight.element_size())


def prefix_slice(weight: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``weight[:rows, :cols]``: a view when only rows are cut, else a contiguous tensor (with autograd, its
    gradient is written into a full-size tensor in one pass)."""
    if cols == weight.shape[1]:
        return weight if rows == weight.shape[0] else weight[:rows]
    if torch.jit.is_tracing():  # plain aten slicing, which traces (and exports) as such
        return weight[:rows, :cols]
    if torch.is_grad_enabled() and weight.requires_grad:
        return _PrefixSlice.apply(weight, rows, cols)
    return weight.detach()[:rows, :cols].contiguous()


def copied_bytes(weight: torch.Tensor, sliced: torch.Tensor) -> int:
    """Bytes ``prefix_slice`` allocated (0 when it returned a view)."""
    return 0 if sliced.shape[1] == weight.shape[1] else sliced.numel() * sliced.element_size()
