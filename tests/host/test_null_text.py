"""Null-text inversion, NPI and bias correction inside real ComfyUI.

Mechanics on tiny random models built in inference mode, as ComfyUI's executor builds them (their
weights are inference tensors, which autograd refuses to save; editing/gradients.py lets gradients through
them without copies); quality on the
shipped embedded model.
"""

from __future__ import annotations

import importlib
import logging

import comfy.model_management
import pytest
import torch

from testbed import comfyhost
from testbed.helpers import edit, guider, random_latent, sigmas
from testbed.images import example_image
from testbed.tiny import (
    image_tensor,
    make_cond,
    make_controlnet,
    make_flux_cond,
    make_model,
    make_sd3_model,
    make_sdxl_cond,
    make_sdxl_model,
)

NODE = "ExactInversion_NullTextInversion"


def pack(name: str):
    loader = comfyhost.pack_module("nodes.toy_model")
    return importlib.import_module(loader.__name__.rsplit(".", 1)[0] + "." + name)


def ddim(nodes, label="next"):
    return nodes["ExactInversion_DDIMSolver"].execute(inversion_label=label, state_dtype="float64").result[0]


def edict(nodes):
    return nodes["ExactInversion_EDICTSolver"].execute(p=0.93, p_rule="fixed", state_dtype="float64").result[0]


def null_text(nodes, g, sampler, sig, latent, **settings):
    with torch.inference_mode():
        return nodes[NODE].execute(guider=g, sampler=sampler, sigmas=sig, latent=latent, **settings).result


@pytest.fixture(scope="module")
def tiny(host):
    """A tiny SD1-shaped UNet built in inference mode, a prompt and an empty prompt (random contexts)."""
    with torch.inference_mode():
        return make_model(3), make_cond(1), make_cond(2)


class RowCounter:
    """Counts model evaluations per conditioning row, forward (a UNet wrapper) and backward (a module hook)."""

    def __init__(self, model, batch: int) -> None:
        self.forward = self.backward = 0
        self.batch = batch
        self.model = model.clone()
        self.model.set_model_unet_function_wrapper(self._wrap)
        self.handle = model.model.diffusion_model.register_full_backward_hook(self._backward)

    def _wrap(self, apply_model, args):
        self.forward += len(args["cond_or_uncond"])
        return apply_model(args["input"], args["timestep"], **args["c"])

    def _backward(self, module, grad_input, grad_output):
        self.backward += grad_output[0].shape[0] // self.batch


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_counted_passes_match_an_independent_count_and_early_stop_cuts_them(node_classes, tiny):
    model, pos, neg = tiny
    counter = RowCounter(model, batch=1)
    try:
        g = guider(node_classes, counter.model, pos, neg, 5.0)
        sig = sigmas(node_classes, model, 4)
        fixed = null_text(node_classes, g, ddim(node_classes), sig, random_latent(), inner_steps=3, early_stop=0.0)[0]
        info = fixed.meta["null_text"]
        assert (info["forward_passes"], info["backward_passes"]) == (counter.forward, counter.backward)
        # pivot 1/step; per step: the cond pass once, 3 uncond passes with backward, 1 uncond pass to advance
        assert (info["forward_passes"], info["backward_passes"]) == (4 + 4 * (1 + 3 + 1), 4 * 3)
        assert info["iterations"] == [3, 3, 3, 3]
        stopped = null_text(node_classes, g, ddim(node_classes), sig, random_latent(), inner_steps=3,
                            early_stop=1e6)[0].meta["null_text"]
        assert stopped["iterations"] == [1, 1, 1, 1] and stopped["backward_passes"] == 4
    finally:
        counter.handle.remove()


def test_nti_learns_one_embedding_per_step_and_lowers_each_steps_loss(node_classes, tiny):
    model, pos, neg = tiny
    sig = sigmas(node_classes, model, 4)
    inv = null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), ddim(node_classes), sig, random_latent(),
                    inner_steps=5, early_stop=0.0, learning_rate=0.05)[0]
    uncond = pack("uncond")
    context = inv.extras[uncond.UNCOND_CONTEXT]
    assert tuple(context.shape) == (4, 1, 77, neg[0][0].shape[-1])
    assert not torch.equal(context[0, 0], neg[0][0][0].float())  # optimised away from the empty prompt
    assert not torch.equal(context[0], context[-1])
    info = inv.meta["null_text"]
    assert all(last < first for first, last in zip(info["first_losses"], info["final_losses"], strict=True))


def test_nti_reconstructs_at_high_cfg_better_than_ddim_inversion(node_classes, tiny):
    """Edit with the same cfg-7.5 guider: the per-step embeddings are applied to its negative automatically."""
    model, pos, neg = tiny
    sig = sigmas(node_classes, model, 6)
    latent = random_latent(seed=4)
    g = guider(node_classes, model, pos, neg, 7.5)
    with torch.inference_mode():
        plain = node_classes["ExactInversion_Invert"].execute(guider=g, sampler=ddim(node_classes), sigmas=sig,
                                                              latent=latent).result[0]
        err_plain = (edit(node_classes, g, plain)["samples"] - latent["samples"]).norm()
    inv = null_text(node_classes, g, ddim(node_classes), sig, latent, inner_steps=10, early_stop=0.0,
                    learning_rate=0.05)[0]
    with torch.inference_mode():
        err_nti = (edit(node_classes, g, inv)["samples"] - latent["samples"]).norm()
    assert err_nti < 0.5 * err_plain


def test_npi_with_edict_is_exact_at_any_cfg_and_edits_with_the_source_as_negative(node_classes, tiny):
    model, pos, neg = tiny
    target = make_cond(7)
    sig = sigmas(node_classes, model, 5)
    latent = random_latent(seed=5)
    inv = null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), edict(node_classes), sig, latent,
                    method="npi")[0]
    assert inv.meta["null_text"]["backward_passes"] == 0
    assert inv.meta["null_text"]["forward_passes"] == 5 * 2 * 2  # EDICT: 2 evaluations per step, Edit's 2 rows
    cheap = null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), ddim(node_classes), sig, latent,
                      method="npi")[0]
    assert cheap.meta["null_text"]["forward_passes"] == 5  # DDIM at guidance 1: the paper's cost
    with torch.inference_mode():
        for cfg in (7.5, 3.0):
            rec = edit(node_classes, guider(node_classes, model, pos, neg, cfg), inv)["samples"]
            assert (rec - latent["samples"]).abs().max() < 1e-5 * latent["samples"].abs().max()
        edited = edit(node_classes, guider(node_classes, model, target, neg, 7.5), inv)["samples"]
        by_hand = edit(node_classes, guider(node_classes, model, target, pos, 7.5), inv)["samples"]
    assert torch.equal(edited, by_hand)
    assert (edited - latent["samples"]).abs().max() > 1e-3


def test_bias_correction_picks_the_best_start_and_stores_the_biased_noise(node_classes, tiny):
    model, pos, neg = tiny
    sig = sigmas(node_classes, model, 3)
    latent = random_latent(seed=6)
    g = guider(node_classes, model, pos, neg, 7.5)
    nti = null_text(node_classes, g, ddim(node_classes), sig, latent, inner_steps=2, early_stop=0.0)[0]
    bias = null_text(node_classes, g, ddim(node_classes), sig, latent, method="bias_correction", inner_steps=2,
                     early_stop=0.0, starts=4, hops=1, start_scale=0.05)[0]
    info = bias.meta["null_text"]
    # the pivot (3) + 4 starts with 1 hop each, 2 passes per try (the zero start has no hop) + step 0 with grad
    # through both passes (2 x 2) + its advance (2) + steps 1, 2 as NTI (1 + 2 + 1 each)
    assert info["forward_passes"] == 3 + 2 * (1 + 3 * 2) + 4 + 2 + 2 * 4
    assert info["backward_passes"] == 2 * 2 + 2 * 2
    assert info["first_losses"][0] <= nti.meta["null_text"]["first_losses"][0]  # zero is one of the starts
    assert not torch.equal(bias.latents["x"], nti.latents["x"])  # the noise bias was learned
    assert bias.latents["x"].shape == nti.latents["x"].shape


def test_nti_backpropagates_through_a_controlnet_on_both_prompts(node_classes, tiny):
    """ControlNet weights are inference tensors too, and its output depends on the embedding."""
    model, pos, neg = tiny
    with torch.inference_mode():
        cnet, hint = make_controlnet(0), image_tensor(example_image())
        c_pos, c_neg = node_classes["ControlNetApplyAdvanced"]().apply_controlnet(pos, neg, cnet, hint, 1.0, 0.0, 1.0)
    g = guider(node_classes, model, c_pos, c_neg, 7.5)
    inv = null_text(node_classes, g, ddim(node_classes), sigmas(node_classes, model, 3), random_latent(seed=2),
                    inner_steps=3, early_stop=0.0, learning_rate=0.05)[0]
    info = inv.meta["null_text"]
    assert all(last < first for first, last in zip(info["first_losses"], info["final_losses"], strict=True))
    with torch.inference_mode():
        plain = null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), ddim(node_classes),
                          sigmas(node_classes, model, 3), random_latent(seed=2), inner_steps=3, early_stop=0.0,
                          learning_rate=0.05)[0]
    assert info["first_losses"] != plain.meta["null_text"]["first_losses"]  # the control took part


def _saved_activation_bytes(run) -> int:
    """Bytes autograd saves for backward during ``run()`` outside recomputed layers, the model's weights left out."""
    total = 0

    def keep(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if not isinstance(t, torch.nn.Parameter) and t.numel() > 1:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        run()
    return total


def _offers_every_layer_to_the_patch() -> bool:
    """Whether this ComfyUI's forward_timestep_embed offers ResBlocks and SpatialTransformers to
    forward_timestep_embed_patch (0.28.2 does; 0.3.75 offers only the layers it has no branch for)."""
    version = importlib.import_module("comfyui_version").__version__
    return tuple(int(p) for p in version.split(".")[:2]) >= (0, 28)


def _without_layer_recompute(monkeypatch) -> None:
    monkeypatch.setattr(pack("layer_recompute"), "install", lambda options: None)


def test_nti_saves_the_models_own_weights_for_backward_not_copies(node_classes, tiny, monkeypatch):
    """No second copy of the weights: every weight autograd saves is the model's own memory (the node used to
    hold a normal copy of all of them for its run). Layer recomputation is off so that the hook sees every save."""
    _without_layer_recompute(monkeypatch)
    model, pos, neg = tiny
    weights = [p for p in model.model.diffusion_model.parameters()]
    own = {p.data_ptr() for p in weights}
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), ddim(node_classes),
                  sigmas(node_classes, model, 2), random_latent(seed=3), inner_steps=1, early_stop=0.0)
    saved_ptrs = {t.data_ptr() for t in saved}
    assert len(own & saved_ptrs) > len(own) // 2  # the weights themselves went into the graph
    by_shape: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for p in weights:
        by_shape.setdefault(tuple(p.shape), []).append(p)
    copies = [t for t in saved if t.data_ptr() not in own and any(
        torch.equal(t, p) for p in by_shape.get(tuple(t.shape), []))]
    assert not copies, f"{len(copies)} saved tensors are copies of weights"


def test_unet_layers_are_recomputed_in_backward_and_the_embeddings_stay_the_same(node_classes, tiny, monkeypatch):
    """ComfyUI offers each UNet layer to the run's forward_timestep_embed_patch handlers (a test that fails if it
    stops): autograd then keeps the layers' inputs, not their activations, and the optimisation is unchanged."""
    model, pos, neg = tiny
    results = []

    def run() -> None:
        results.append(null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), ddim(node_classes),
                                 sigmas(node_classes, model, 3), random_latent(seed=4), inner_steps=3,
                                 early_stop=0.0)[0])

    recomputed = _saved_activation_bytes(run)
    _without_layer_recompute(monkeypatch)
    kept = _saved_activation_bytes(run)
    if _offers_every_layer_to_the_patch():
        assert recomputed < 0.3 * kept, (recomputed, kept)
    else:  # ComfyUI 0.3.75 offers only layers it has no branch for: the activations are kept, as before
        assert recomputed == kept
    key = pack("uncond").UNCOND_CONTEXT
    torch.testing.assert_close(results[0].extras[key], results[1].extras[key], rtol=1e-6, atol=1e-6)


def test_save_and_load_keep_the_embeddings(node_classes, tiny, host):
    model, pos, neg = tiny
    sig = sigmas(node_classes, model, 3)
    latent = random_latent(seed=8)
    g = guider(node_classes, model, pos, neg, 7.5)
    inv = null_text(node_classes, g, ddim(node_classes), sig, latent, inner_steps=2)[0]
    with torch.inference_mode():
        before = edit(node_classes, g, inv)["samples"]
        name = node_classes["ExactInversion_SaveInversion"].execute(inversion=inv,
                                                                    filename_prefix="nti_roundtrip").result[0]
        loaded = node_classes["ExactInversion_LoadInversion"].execute(file=name, allow_mismatch=False).result[0]
        after = edit(node_classes, g, loaded)["samples"]
    assert loaded.meta["null_text"] == inv.meta["null_text"]
    assert torch.equal(before, after)


POOLED_FAMILIES = {  # model, its conditioning, latent shape
    "sdxl": (lambda: make_sdxl_model(2), make_sdxl_cond, (1, 4, 8, 8)),
    "sd3": (lambda: make_sd3_model(2), lambda seed: make_flux_cond(seed, tokens=154), (1, 16, 8, 8)),
}


@pytest.mark.parametrize("family", list(POOLED_FAMILIES))
def test_pooled_output_is_kept_with_the_embeddings(node_classes, host, family):
    """SDXL's ``y`` (pooled CLIP-G + sizes) and SD3's pooled vector go with the stored embeddings: NPI with
    EDICT is exact only because Edit swaps them too."""
    build, cond, shape = POOLED_FAMILIES[family]
    with torch.inference_mode():
        model, pos, neg = build(), cond(1), cond(2)
    sig = sigmas(node_classes, model, 4)
    latent = random_latent(shape, seed=3)
    g = guider(node_classes, model, pos, neg, 5.0)
    inv = null_text(node_classes, g, edict(node_classes), sig, latent, method="npi")[0]
    uncond = pack("uncond")
    assert uncond.UNCOND_POOLED in inv.extras
    with torch.inference_mode():
        rec = edit(node_classes, g, inv)["samples"]
        assert (rec - latent["samples"]).abs().max() < 1e-5 * latent["samples"].abs().max()
        inv.extras.pop(uncond.UNCOND_POOLED)  # the negative's own pooled output instead: no longer exact
        assert (edit(node_classes, g, inv)["samples"] - latent["samples"]).abs().max() > 1e-4
    nti = null_text(node_classes, g, ddim(node_classes), sig, latent, inner_steps=2)[0]
    assert nti.extras[uncond.UNCOND_CONTEXT].shape[:2] == (4, 1)
    assert uncond.UNCOND_POOLED in nti.extras


def test_fp16_model_is_optimised_in_float32_with_finite_updates(node_classes, host):
    with torch.inference_mode():
        model = make_model(3, dtype=torch.float16)
        pos, neg = make_cond(1), make_cond(2)
    sig = sigmas(node_classes, model, 3)
    inv = null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), ddim(node_classes), sig,
                    random_latent(seed=9), inner_steps=4, early_stop=0.0, learning_rate=0.05)[0]
    info = inv.meta["null_text"]
    context = inv.extras[pack("uncond").UNCOND_CONTEXT]
    assert context.dtype == torch.float32 and torch.isfinite(context).all()
    assert info["skipped_updates"] == 0
    assert all(last < first for first, last in zip(info["first_losses"], info["final_losses"], strict=True))


def test_interruption_is_honoured_inside_the_inner_loop(node_classes, tiny):
    model, pos, neg = tiny
    counter = RowCounter(model, batch=1)
    counter.handle.remove()
    calls = {"n": 0}
    inner = counter._wrap

    def interrupt_after_pivot(apply_model, args):
        calls["n"] += 1
        if calls["n"] == 4 + 3:  # the pivot's 4 calls, the cond pass, two uncond iterations
            comfy.model_management.interrupt_current_processing(True)
        return inner(apply_model, args)

    counter.model.set_model_unet_function_wrapper(interrupt_after_pivot)
    g = guider(node_classes, counter.model, pos, neg, 7.5)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            null_text(node_classes, g, ddim(node_classes), sigmas(node_classes, model, 4), random_latent(),
                      inner_steps=10, early_stop=0.0)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert calls["n"] == 7  # stopped at the very next evaluation, in the first step's inner loop


def test_a_coupled_solver_gives_the_pivot_and_ddim_follows_it(node_classes, tiny):
    model, pos, neg = tiny
    inv = null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), edict(node_classes),
                    sigmas(node_classes, model, 3), random_latent(), inner_steps=2)[0]
    assert (inv.solver, inv.meta["null_text"]["pivot_solver"], sorted(inv.latents)) == ("ddim", "edict", ["x"])
    # the EDICT pivot costs 2 evaluations per step; then 1 + 2 + 1 per step
    assert inv.meta["null_text"]["forward_passes"] == 3 * 2 + 3 * 4


@pytest.mark.parametrize("case", ["basic_guider", "cfg_one", "edit_without_negative"])
def test_bad_inputs_get_messages_that_name_the_input(node_classes, tiny, case):
    model, pos, neg = tiny
    sig = sigmas(node_classes, model, 3)
    g = guider(node_classes, model, pos, neg, 7.5)
    basic = node_classes["BasicGuider"].execute(model=model, conditioning=pos).result[0]
    calls = {
        "basic_guider": (lambda: null_text(node_classes, basic, ddim(node_classes), sig, random_latent()), "'guider'"),
        "cfg_one": (lambda: null_text(node_classes, guider(node_classes, model, pos, neg, 1.0), ddim(node_classes),
                                      sig, random_latent()), "cfg 1"),
    }
    if case == "edit_without_negative":
        inv = null_text(node_classes, g, ddim(node_classes), sig, random_latent(), inner_steps=1)[0]
        with pytest.raises(ValueError, match="CFGGuider") as err, torch.inference_mode():
            edit(node_classes, basic, inv)
        assert "Edit from Inversion" in str(err.value)
        return
    fn, named = calls[case]
    with pytest.raises(ValueError, match=named) as err:
        fn()
    assert "Null-text Inversion" in str(err.value)


def test_attention_mask_of_a_null_text_inversion_needs_a_guider_with_a_negative(node_classes, tiny):
    from testbed.tiny import make_clip

    model, pos, neg = tiny
    inv = null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), ddim(node_classes),
                    sigmas(node_classes, model, 3), random_latent(), inner_steps=1)[0]
    basic = node_classes["BasicGuider"].execute(model=model, conditioning=pos).result[0]
    with pytest.raises(ValueError, match="connect a CFGGuider") as err, torch.inference_mode():
        node_classes["ExactInversion_AttentionMask"].execute(guider=basic, inversion=inv, clip=make_clip(0),
                                                             prompt="a dog", words="dog", resolution="all",
                                                             start=0.0, end=1.0)
    assert "Attention Mask" in str(err.value)


def test_edit_warns_when_the_cfg_differs_from_the_optimised_one(node_classes, tiny, caplog):
    model, pos, neg = tiny
    sig = sigmas(node_classes, model, 3)
    inv = null_text(node_classes, guider(node_classes, model, pos, neg, 7.5), ddim(node_classes), sig,
                    random_latent(), inner_steps=1)[0]
    with caplog.at_level(logging.WARNING), torch.inference_mode():
        edit(node_classes, guider(node_classes, model, pos, neg, 4.0), inv)
    assert "optimised for cfg 7.5" in caplog.text


def test_schedules_are_the_papers_at_50_steps_and_stretch_with_the_grid():
    settings = pack("nulltext").NullTextSettings()
    for i in range(50):
        assert settings.learning_rate_at(i, 50) == pytest.approx(1e-2 * (1 - i / 100))  # NTI: lr 1e-2 (1 - i/100)
        assert settings.threshold_at(i, 50) == pytest.approx(1e-5 + i * 2e-5)  # NTI: epsilon + i * 2e-5
    assert settings.learning_rate_at(24, 25) == pytest.approx(settings.learning_rate_at(48, 50))
    assert settings.threshold_at(24, 25) == pytest.approx(settings.threshold_at(48, 50))
    tightening = pack("nulltext").NullTextSettings(early_stop=2e-4, early_stop_schedule="tightening")
    assert [tightening.threshold_at(i, 50) for i in (0, 49)] == pytest.approx([2e-4 * 99, 2e-4])


def test_an_evaluation_belongs_to_the_step_whose_upper_level_it_is_at_or_below():
    step_index = pack("uncond").step_index
    grid = torch.tensor([14.6, 5.0, 1.2, 0.3, 0.0], dtype=torch.float64)
    assert [step_index(grid, s) for s in (14.6, 5.0, 1.2, 0.3)] == [0, 1, 2, 3]
    assert [step_index(grid, s) for s in (9.0, 3.0, 0.5, 0.1)] == [0, 1, 2, 3]  # EES stages between levels
    assert step_index(grid, torch.tensor([5.0, 5.0])) == 1  # a batch of one sigma


@pytest.fixture(scope="module")
def shipped_case(host, node_classes):
    """The shipped embedded model, held-out image 0, its caption at cfg 7.5, 10 steps."""
    from toyworld import world as W

    loader = comfyhost.pack_module("nodes.toy_model")
    loader.set_model_folder(None)
    loader.clear_cache()
    with torch.inference_mode():
        model, clip, vae = node_classes["ExactInversion_ToyModelLoader"].execute(model_file=loader.DEFAULT_FILE).result
        batch = W.held_out(1)
        encode = node_classes["CLIPTextEncode"]().encode
        g = guider(node_classes, model, encode(clip, batch.captions[0])[0], encode(clip, "")[0], 7.5)
        pixels = W.to_unit(batch.images).movedim(1, -1).contiguous()
        latent = node_classes["VAEEncode"]().encode(vae, pixels)[0]
    return node_classes, g, sigmas(node_classes, model, 10), latent, vae, batch.images


def reconstruction_psnr(case, **settings) -> tuple[float, dict]:
    from toyworld import judge as J

    nodes, g, sig, latent, vae, image = case
    inv = null_text(nodes, g, ddim(nodes), sig, latent, **settings)[0]
    with torch.inference_mode():
        rec = nodes["VAEDecode"]().decode(vae, edit(nodes, g, inv))[0].movedim(-1, 1) * 2 - 1
    return float(J.psnr(rec, image)[0]), inv.meta["null_text"]


def test_the_papers_early_stop_does_not_fit_the_embedded_model_tightening_does(shipped_case):
    """Spec finding (Mokady et al., CVPR 2023, §3.2): NTI's threshold 1e-5 + i·2e-5 is a mean squared error of SD
    latents.

    On the embedded model (a pixel-space latent) no step's loss comes near it, so the paper's early stop
    never fires; and its growing schedule loosens the last steps, whose loss is the reconstruction's own
    error: at the same threshold and learning rate, the tightening schedule reconstructs far better.
    """
    _, paper = reconstruction_psnr(shipped_case)
    settings = pack("nulltext").NullTextSettings()
    assert paper["iterations"] == [10] * 10
    assert min(paper["final_losses"]) > 5 * max(settings.threshold_at(i, 10) for i in range(10))
    toy = {"learning_rate": 0.1, "early_stop": 2e-4}
    growing, g_info = reconstruction_psnr(shipped_case, early_stop_schedule="growing", **toy)
    tightening, t_info = reconstruction_psnr(shipped_case, early_stop_schedule="tightening", **toy)
    assert g_info["iterations"][-1] == 1 and t_info["iterations"][-1] == 10
    assert tightening > growing + 3.0, (tightening, growing)


def test_gradient_methods_refuse_a_dynamic_vram_model_and_npi_runs(node_classes):
    """ComfyUI 0.28's ModelPatcherDynamic (the NVIDIA default) computes with per-call copies of the weights that
    autograd cannot use: 'nti' and 'bias_correction' refuse it, naming the fix; 'npi' needs no gradients.
    (On the CPU ComfyUI never builds one, so a patcher of this test's own stands in, reporting is_dynamic.)"""
    import comfy.model_patcher

    class Dynamic(comfy.model_patcher.ModelPatcher):
        def is_dynamic(self) -> bool:
            return True

    base = make_model(3)
    model = Dynamic(base.model, load_device=base.load_device, offload_device=base.offload_device)
    g, sig = guider(node_classes, model, make_cond(1), make_cond(2), 5.0), sigmas(node_classes, model, 3)
    for method in ("nti", "bias_correction"):
        with pytest.raises(ValueError, match=rf"^Null-text Inversion: input 'method' \({method}\) needs gradients .* "
                                             r"--disable-dynamic-vram, or use method 'npi'"):
            null_text(node_classes, g, ddim(node_classes), sig, random_latent(), method=method)
    inv, _ = null_text(node_classes, g, ddim(node_classes), sig, random_latent(), method="npi")
    assert inv.meta["null_text"]["method"] == "npi"


def test_layer_recompute_leaves_the_embedded_models_optimisation_as_it_was(shipped_case, monkeypatch):
    """The shipped model's null-text embeddings and reconstruction with and without layer recomputation."""
    psnr, info = reconstruction_psnr(shipped_case, inner_steps=4)
    _without_layer_recompute(monkeypatch)
    psnr_kept, info_kept = reconstruction_psnr(shipped_case, inner_steps=4)
    assert psnr == pytest.approx(psnr_kept, abs=1e-4)
    assert info["final_losses"] == pytest.approx(info_kept["final_losses"], rel=1e-5)


def test_weights_cast_per_operation_as_lowvram_loads_them_give_the_same_embeddings(node_classes, tiny):
    """ComfyUI's lowvram and manual-cast loading cast each weight when an operation runs
    (``forward_comfy_cast_weights``): the optimisation, and on 0.28 its layer recomputation, go through that path
    and agree with the plainly loaded model."""
    model, pos, neg = tiny
    cast = model.clone()
    cast.set_model_compute_dtype(torch.float32)  # force_cast_weights: every op casts its weight, as lowvram does
    results = [null_text(node_classes, guider(node_classes, m, pos, neg, 7.5), ddim(node_classes),
                         sigmas(node_classes, model, 3), random_latent(seed=5), inner_steps=3, early_stop=0.0)[0]
               for m in (model, cast)]
    key = pack("uncond").UNCOND_CONTEXT
    assert not torch.equal(results[0].extras[key][0], neg[0][0].float())  # optimised
    torch.testing.assert_close(results[1].extras[key], results[0].extras[key], rtol=1e-6, atol=1e-6)
