"""The tiny test ControlNet: seeded, with live zero convs, and served by the test pack's loader node.

Its effect on the model inside our Invert path is asserted in test_exact_solvers.py; here we check
what makes that meaningful: the weights that trained ControlNets start at zero are not zero here.
"""

from __future__ import annotations

import comfy.controlnet
import torch

from testbed.tiny import make_controlnet

LOADER = "ExactInversionTest_TinyControlNetLoader"


def _zero_conv_weights(cnet: comfy.controlnet.ControlNet) -> dict[str, torch.Tensor]:
    """Weights of the layers a trained ControlNet initialises to zero (zero convs, middle block out)."""
    return {n: p for n, p in cnet.control_model.named_parameters()
            if n.startswith(("zero_convs.", "middle_block_out.")) and n.endswith("weight")}


def test_zero_convs_are_nonzero(host):
    weights = _zero_conv_weights(make_controlnet(0))
    assert len(weights) >= 5, sorted(weights)  # one per input block plus the middle block's
    for name, w in weights.items():
        assert torch.isfinite(w).all() and w.abs().min() > 0, name


def test_weights_follow_the_seed(host):
    a, b, c = (make_controlnet(s).control_model.state_dict() for s in (0, 0, 1))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].ndim >= 2)


def test_loader_node_gives_a_cached_control_net_per_seed(node_classes):
    first = node_classes[LOADER].execute(seed=0).result[0]
    assert isinstance(first, comfy.controlnet.ControlNet)
    assert node_classes[LOADER].execute(seed=0).result[0] is first
    assert node_classes[LOADER].execute(seed=1).result[0] is not first


def test_applying_leaves_the_cached_net_untouched(node_classes):
    """ControlNetApplyAdvanced copies the net before setting a hint, so caching the loader's output is safe."""
    cnet = node_classes[LOADER].execute(seed=0).result[0]
    cond = [[torch.zeros(1, 77, 64), {}]]
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    pos, neg = node_classes["ControlNetApplyAdvanced"]().apply_controlnet(cond, cond, cnet, hint, 1.0, 0.0, 1.0)
    applied = pos[0][1]["control"]
    assert applied is not cnet and applied is neg[0][1]["control"] and applied.cond_hint_original is not None
    assert cnet.cond_hint_original is None
