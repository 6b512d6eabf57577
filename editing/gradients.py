"""Gradients through a model whose weights are inference tensors, without copying the weights.

ComfyUI loads weights under ``torch.inference_mode``, and autograd refuses to save an inference tensor for
backward. Null-text optimisation needs gradients with respect to the text embedding only, so instead of
swapping every weight for a normal copy (twice the model's memory, and a change to modules the run does not
own), a torch-function mode hands each operation that records a backward pass *aliases* of its inference
inputs: normal tensors over the same storage, made per call and dropped with the graph. No module, parameter
or buffer is touched, nothing is copied, and anything outside the ``with`` block sees nothing.

Two rules, applied to every torch operation called inside :func:`gradients_through_frozen_weights`:

* a ``torch.nn.Parameter`` that requires grad (as parameters built in inference mode do) is passed detached,
  so the weights never get gradients and never grow a graph (attribute reads such as ``requires_grad`` still
  see the parameter itself);
* when any remaining input requires grad, every inference-tensor input is passed as an alias. Operations
  without a gradient-carrying input run untouched (their results are what they would be anyway).

An alias has its own version counter: an in-place change of the weight's storage during a backward pass
would go unnoticed. ComfyUI does not change weights while a model runs, except under dynamic VRAM, whose
streamed weight buffers are reused; the node refuses that loader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils.checkpoint
from torch.overrides import TorchFunctionMode


def alias(tensor: torch.Tensor) -> torch.Tensor:
    """A normal (non-inference) tensor over ``tensor``'s storage: same memory, no copy."""
    out = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return out.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


#: what an operation's inputs hold: a tensor that records a graph, a frozen parameter, an inference tensor
RECORDS, FROZEN, INFERENCE = 1, 2, 4


def _flags(value: Any, flags: int = 0) -> int:
    """OR of RECORDS / FROZEN / INFERENCE over the tensors in nested lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            flags |= FROZEN if isinstance(value, torch.nn.Parameter) else RECORDS
        if value.is_inference():
            flags |= INFERENCE
    elif isinstance(value, (list, tuple)):
        for v in value:
            flags = _flags(v, flags)
    elif isinstance(value, dict):
        for v in value.values():
            flags = _flags(v, flags)
    return flags


def _map(fn: Callable[[torch.Tensor], torch.Tensor], value: Any) -> Any:
    """``fn`` on every tensor in nested lists, tuples and dicts."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        mapped = [_map(fn, v) for v in value]
        return type(value)(*mapped) if hasattr(value, "_fields") else type(value)(mapped)
    if isinstance(value, dict):
        return {k: _map(fn, v) for k, v in value.items()}
    return value


class _FrozenWeights(TorchFunctionMode):
    """Per operation: frozen parameters detached, inference inputs aliased where autograd will record.

    Stand-ins (aliases and detached parameters) are kept for the block's duration, with the tensors they stand
    for (so an id is never reused): the same weights enter many operations, and each gets the same stand-in.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stand_ins: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.stand_in_ids: set[int] = set()

    def _stand_in(self, t: torch.Tensor, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        hit = self.stand_ins.get(id(t))
        if hit is None:
            hit = self.stand_ins[id(t)] = (t, make(t))
            self.stand_in_ids.add(id(hit[1]))
        return hit[1]

    def is_weight(self, t: torch.Tensor) -> bool:
        """Whether ``t`` is a stand-in for a weight (or another frozen input), not an activation."""
        return id(t) in self.stand_in_ids

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 - torch's protocol
        kwargs = kwargs or {}
        if not torch.is_grad_enabled() or getattr(func, "__name__", "") == "__get__":
            return func(*args, **kwargs)  # nothing records, or an attribute read: answered as it is
        flags = _flags(kwargs, _flags(args))
        inference = flags & RECORDS and flags & INFERENCE
        if not (inference or flags & FROZEN):
            return func(*args, **kwargs)

        def fix(t: torch.Tensor) -> torch.Tensor:
            if inference and t.is_inference():
                return self._stand_in(t, alias)
            if t.requires_grad and isinstance(t, torch.nn.Parameter):
                return self._stand_in(t, torch.Tensor.detach)
            return t

        return func(*_map(fix, args), **_map(fix, kwargs))


@contextlib.contextmanager
def gradients_through_frozen_weights(copy_saved: bool = False) -> Iterator[None]:
    """Autograd on (inference mode lifted, grad enabled) through frozen, possibly inference-mode weights.

    ``copy_saved`` keeps private copies of the activations autograd saves: ComfyUI's UNet adds ControlNet
    outputs to its skip connections in place (``apply_control``) after the next block saved them, which
    autograd would otherwise refuse. It costs a copy of those activations, never of the weights.
    """
    mode = _FrozenWeights()
    saved = torch.autograd.graph.saved_tensors_hooks(lambda t: t if mode.is_weight(t) else t.clone(), lambda t: t) \
        if copy_saved else contextlib.nullcontext()
    with torch.inference_mode(False), torch.enable_grad(), saved, mode:
        yield


def recomputed_in_backward(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with autograd keeping only the inputs: its activations are recomputed in the backward pass.

    One layer's activations at a time instead of the whole model's (activation checkpointing, non-reentrant:
    an input changed in place before backward raises instead of giving a wrong gradient). Outside a gradient
    computation it is a plain call.
    """
    if not torch.is_grad_enabled():
        return fn(*args)

    def run(*inputs: Any) -> Any:
        # autograd recomputes outside the forward pass's torch-function modes: each run brings its own (in the
        # forward pass it sits above the block's mode and hands it inputs that need nothing more)
        with torch.inference_mode(False), _FrozenWeights():
            return fn(*inputs)

    # checkpoint saves the inputs themselves: inference ones (latents, a fixed prompt) go in as aliases
    kept = [alias(a) if isinstance(a, torch.Tensor) and a.is_inference() else a for a in args]
    return torch.utils.checkpoint.checkpoint(run, *kept, use_reentrant=False, preserve_rng_state=False)
