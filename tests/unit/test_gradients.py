"""editing/gradients.py: gradients with respect to the inputs through weights loaded in inference mode, equal
to those through a normal copy, with no weight copied, replaced or given a gradient."""

from __future__ import annotations

import copy

import pytest
import torch

from editing.gradients import alias, gradients_through_frozen_weights, recomputed_in_backward


class Net(torch.nn.Module):
    """The operations ComfyUI's models use: conv, group norm, linear, layer norm, a buffer, a list concat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.ln = torch.nn.LayerNorm(4)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 4))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x)).mean(dim=(2, 3)) * self.scale
        h = self.ln(self.proj(torch.cat([h, context]).tanh()))
        return (h**2).sum()


def built(inference: bool) -> Net:
    torch.manual_seed(0)
    if not inference:
        return Net().double()
    with torch.inference_mode():
        return Net().double()


def inputs(inference: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode(inference):  # as ComfyUI's latents are
        x = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64)
    context = torch.randn(1, 4, generator=g, dtype=torch.float64)
    return x, context


def grad_of_context(net: Net, inference_inputs: bool = True) -> torch.Tensor:
    x, context = inputs(inference_inputs)
    context.requires_grad_(True)
    net(x, context).backward()
    return context.grad


def test_autograd_refuses_inference_weights_without_it() -> None:
    with torch.inference_mode(False), pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
        grad_of_context(built(inference=True))


def test_gradients_equal_those_through_a_normal_copy_of_the_weights() -> None:
    net = built(inference=True)
    reference = Net().double()
    reference.load_state_dict({k: v.clone() for k, v in net.state_dict().items()})
    with gradients_through_frozen_weights():
        got = grad_of_context(net)
    want = grad_of_context(reference, inference_inputs=False)
    assert not got.is_inference() and torch.equal(got, want)


def test_no_weight_is_copied_replaced_or_given_a_gradient() -> None:
    net = built(inference=True)
    before = {n: (t, t.data_ptr()) for n, t in [*net.named_parameters(), *net.named_buffers()]}
    saved_ptrs: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved_ptrs.append(t.data_ptr())
        return t

    with gradients_through_frozen_weights(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        grad_of_context(net)
    after = dict([*net.named_parameters(), *net.named_buffers()])
    for name, (tensor, ptr) in before.items():
        assert after[name] is tensor and tensor.data_ptr() == ptr, name
        assert tensor.is_inference() and tensor.grad is None, name
    # autograd saved the weights themselves (their memory), not copies of them
    assert before["proj.weight"][1] in saved_ptrs and before["ln.weight"][1] in saved_ptrs


def test_parameters_that_require_grad_stay_so_and_get_none() -> None:
    net = built(inference=False)
    with gradients_through_frozen_weights():
        got = grad_of_context(net)
        assert net.proj.weight.requires_grad  # attribute reads inside the block see the parameter as it is
    assert all(p.requires_grad and p.grad is None for p in net.parameters())
    assert torch.equal(got, grad_of_context(copy.deepcopy(net), inference_inputs=False))


def test_activations_changed_in_place_after_saving_need_copy_saved() -> None:
    """ComfyUI's apply_control adds ControlNet outputs to saved skips in place."""
    w = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def run() -> None:
        e = (x * 2).exp()
        y = (e * w).sum()
        e.add_(1.0)  # exp's result, which its backward saved, changed in place
        y.backward()

    with gradients_through_frozen_weights(), pytest.raises(RuntimeError, match="modified by an inplace"):
        run()
    x.grad = None
    with gradients_through_frozen_weights(copy_saved=True):
        run()
    assert torch.allclose(x.grad, 2 * (2 * x.detach()).exp() * w.sum(0), rtol=1e-14, atol=0)


@pytest.mark.parametrize("copy_saved", [False, True])
def test_copy_saved_copies_activations_never_weights(copy_saved: bool) -> None:
    with torch.inference_mode():
        w = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    with gradients_through_frozen_weights(copy_saved=copy_saved):
        h = x.exp()
        out = h @ w  # saves w (for h's gradient); exp saved its result h
    assert out.grad_fn._saved_mat2.data_ptr() == w.data_ptr()  # the weight itself, also with copy_saved
    assert (h.grad_fn._saved_result.data_ptr() != h.data_ptr()) == copy_saved  # the activation copied


def test_nothing_lasts_after_the_block() -> None:
    net = built(inference=True)
    with gradients_through_frozen_weights():
        grad_of_context(net)
    assert torch.is_inference_mode_enabled() is False
    with torch.inference_mode(False), pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
        grad_of_context(net)


def test_alias_shares_memory_and_is_a_normal_tensor() -> None:
    with torch.inference_mode():
        t = torch.arange(12.0).reshape(3, 4)[1:, ::2]
    a = alias(t)
    assert not a.is_inference() and a.data_ptr() == t.data_ptr() and torch.equal(a, t)
    assert a.stride() == t.stride() and a.storage_offset() == t.storage_offset()


def test_recomputed_layers_give_the_same_gradients_and_keep_only_their_inputs() -> None:
    """Activation checkpointing through inference weights: autograd recomputes outside the forward pass's
    torch-function modes, so each recomputation brings its own; only the layer's inputs are kept."""
    net = built(inference=True)
    with gradients_through_frozen_weights():
        want = grad_of_context(net)
    saved: list[torch.Tensor] = []
    x, context = inputs(True)
    context.requires_grad_(True)
    with gradients_through_frozen_weights(), torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t) or t, lambda t: t):
        recomputed_in_backward(net, x, context).backward()
    assert torch.equal(context.grad, want)
    assert len(saved) <= 2  # the inputs (x is not saved: it needs no gradient); no activation


def test_recomputed_is_a_plain_call_without_gradients() -> None:
    net = built(inference=True)
    x, context = inputs(True)
    with torch.inference_mode():
        assert torch.equal(recomputed_in_backward(net, x, context), net(x, context))
