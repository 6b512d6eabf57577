"""Runtime behaviour of Invert and Edit inside real ComfyUI.

Half-precision models (the tiny UNet cast to fp16/bf16) with a float64 state, interruption honoured
within one model evaluation, the progress bar and latent previews, and batches without cross-talk.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import comfy.model_management
import comfy.utils
import pytest
import torch
from comfy.cli_args import LatentPreviewMethod, args
from PIL import Image

from testbed.helpers import edit, guider, invert, random_latent, sigmas
from testbed.solver_nodes import host_roundtrip, relative, solver_sampler
from testbed.tiny import make_cond, make_model

SOLVERS = ("bdia", "edict")
LOW_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def make_solver(node_classes: dict, name: str, state_dtype: str = "float64") -> Any:
    return solver_sampler(node_classes, name, state_dtype=state_dtype)


@pytest.fixture(scope="module")
def fp32_model(host) -> Any:
    return make_model(0)


@pytest.fixture(scope="module", params=sorted(LOW_DTYPES))
def low_model(host, request) -> tuple[torch.dtype, Any]:
    dtype = LOW_DTYPES[request.param]
    return dtype, make_model(0, dtype=dtype)


# --- fp16 / bf16 models ------------------------------------------------------------------------------


@contextlib.contextmanager
def spy_network(model: Any) -> Iterator[list[tuple[torch.dtype, torch.dtype]]]:
    """Record (input dtype, output dtype) of every call of the UNet itself (after ComfyUI's casts)."""
    net = model.model.diffusion_model
    original = net.forward
    seen: list[tuple[torch.dtype, torch.dtype]] = []

    def forward(x, *a, **kw):
        out = original(x, *a, **kw)
        seen.append((x.dtype, out.dtype))
        return out

    net.forward = forward
    try:
        yield seen
    finally:
        del net.forward


def eps_prediction(model: Any, x: torch.Tensor, sigma: float, context: torch.Tensor) -> torch.Tensor:
    """The network's noise prediction through ComfyUI's apply_model (float32 in, float32 out)."""
    with torch.inference_mode():
        denoised = model.model.apply_model(x, torch.full((x.shape[0],), sigma), c_crossattn=context)
    return (x - denoised) / sigma


def test_low_precision_model_really_computes_in_low_precision(node_classes, fp32_model, low_model):
    """Without this, the exactness test below could pass on a model ComfyUI silently upcast."""
    dtype, model = low_model
    assert model.model.get_dtype() == dtype
    assert model.model.manual_cast_dtype is None  # no per-layer upcast of the weights
    assert {p.dtype for p in model.model.diffusion_model.parameters()} == {dtype}

    with spy_network(model) as seen:
        g = guider(node_classes, model, make_cond(1), make_cond(2), 3.0)
        host_roundtrip(node_classes, g, make_solver(node_classes, "bdia"), sigmas(node_classes, model, 4),
                       random_latent())
    assert seen and set(seen) == {(dtype, dtype)}, set(seen)

    # same weights (rounded), same inputs: outputs differ by a few units of the low precision's rounding
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    context = make_cond(1)[0][0].repeat(2, 1, 1)
    unit = torch.finfo(dtype).eps / 2
    for sigma in (0.1, 1.0, 10.0):
        ref = eps_prediction(fp32_model, x, sigma, context)
        diff = relative(eps_prediction(model, x, sigma, context), ref)
        assert unit <= diff <= 30 * unit, (sigma, diff / unit)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_low_precision_model_exact_roundtrip_with_float64_state(node_classes, low_model, solver, cfg):
    """Exact solvers only need the network to be deterministic, not precise: a float64 state suffices."""
    dtype, model = low_model
    g = guider(node_classes, model, make_cond(1), make_cond(2), cfg)
    rel, inv, _ = host_roundtrip(node_classes, g, make_solver(node_classes, solver), sigmas(node_classes, model, 8),
                            random_latent(seed=7))
    assert all(t.dtype == torch.float64 for t in inv.latents.values())
    assert rel <= 1e-5, (dtype, solver, cfg, rel)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_low_precision_model_float32_state_reported(node_classes, low_model, solver, record_property):
    """A float32 state makes no exactness claim; its error is recorded and must be a number."""
    dtype, model = low_model
    g = guider(node_classes, model, make_cond(1), make_cond(2), 3.0)
    rel, inv, _ = host_roundtrip(node_classes, g, make_solver(node_classes, solver, "float32"),
                            sigmas(node_classes, model, 8), random_latent(seed=7))
    record_property(f"float32_state_relative_error_{dtype}_{solver}", rel)
    assert all(t.dtype == torch.float32 for t in inv.latents.values())
    assert math.isfinite(rel), rel


# --- interruption ------------------------------------------------------------------------------------


class CountingWrapper:
    """A model_function_wrapper counting model evaluations; sets ComfyUI's interrupt flag in the k-th.

    ``when="during"`` sets it before the network runs (ComfyUI 0.3.75's own layers then stop that
    evaluation); ``when="after"`` sets it once the network has returned, so only the pack's check
    between evaluations can stop the next one from starting.
    """

    def __init__(self, when: str) -> None:
        self.when = when
        self.calls = 0
        self.trigger: int | None = None
        self.flagged_at: int | None = None

    def __call__(self, apply_model: Callable[..., torch.Tensor], params: dict) -> torch.Tensor:
        self.calls += 1
        hit = self.trigger is not None and self.calls == self.trigger
        if hit and self.when == "during":
            self.flag()
        out = apply_model(params["input"], params["timestep"], **params["c"])
        if hit and self.when == "after":
            self.flag()
        return out

    def flag(self) -> None:
        comfy.model_management.interrupt_current_processing(True)
        self.flagged_at = self.calls


@pytest.mark.parametrize("solver", sorted(SOLVERS))
@pytest.mark.parametrize("phase", ["invert", "edit"])
@pytest.mark.parametrize("when", ["during", "after"])
def test_interrupt_within_one_model_evaluation(node_classes, fp32_model, solver, phase, when):
    """Cancel in the UI stops a long inversion/edit at once, and leaves nothing behind for the next run."""
    counter = CountingWrapper(when)
    model = fp32_model.clone()
    model.set_model_unet_function_wrapper(counter)
    g = guider(node_classes, model, make_cond(1), make_cond(2), 3.0)
    sig = sigmas(node_classes, model, 8)
    latent = random_latent(seed=5)
    sampler = make_solver(node_classes, solver)

    _, clean_inv, clean_z = host_roundtrip(node_classes, g, sampler, sig, latent)
    per_run = counter.calls
    assert per_run >= 2 * 8 - 1  # one batched (cond + uncond) evaluation per step each way; BDIA's edit has 7
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException), torch.inference_mode():
            if phase == "invert":
                counter.trigger = counter.calls + 3
                invert(node_classes, g, sampler, sig, latent)
            else:
                counter.trigger = counter.calls + per_run  # out of reach of the inversion
                inv, _ = invert(node_classes, g, sampler, sig, latent)
                counter.trigger = counter.calls + 3
                edit(node_classes, g, inv)
        assert counter.flagged_at is not None, "the run ended before the k-th model evaluation"
        further = counter.calls - counter.flagged_at
        # flagged after an evaluation returned: the next one must not even start
        assert further <= (1 if when == "during" else 0), further
    finally:
        comfy.model_management.interrupt_current_processing(False)
        counter.trigger = None

    # a new run after the interrupt behaves exactly like the one before it
    before = counter.calls
    rel, inv, z_top = host_roundtrip(node_classes, g, sampler, sig, latent)
    assert counter.calls - before == per_run
    assert rel <= 1e-5, rel
    assert torch.equal(z_top["samples"], clean_z["samples"])
    assert all(torch.equal(inv.latents[k], clean_inv.latents[k]) for k in clean_inv.latents)


# --- progress bar and latent previews ----------------------------------------------------------------


@contextlib.contextmanager
def progress_hook(method: LatentPreviewMethod) -> Iterator[list[tuple[int, int, Any]]]:
    """Record (value, total, preview) of every progress update the pack reports, with the given preview method.

    Recorded where the pack reports them, at ``ProgressBar.update_absolute``: what ComfyUI's hook passes on
    is throttled (0.28 drops updates closer than 0.1 s apart, previews excepted), so it says more about the
    clock than about the pack. A hook is installed too, so ComfyUI's own path runs as in a server.
    """
    updates: list[tuple[int, int, Any]] = []
    previous_hook, previous_method = comfy.utils.PROGRESS_BAR_HOOK, args.preview_method
    stock = comfy.utils.ProgressBar.update_absolute

    def recording(bar: Any, value: int, total: int | None = None, preview: Any = None) -> None:
        updates.append((value, total if total is not None else bar.total, preview))
        stock(bar, value, total, preview)

    comfy.utils.set_progress_bar_global_hook(lambda *a, **k: None)
    args.preview_method = method
    comfy.utils.ProgressBar.update_absolute = recording  # test-only spy, restored below
    try:
        yield updates
    finally:
        comfy.utils.ProgressBar.update_absolute = stock
        comfy.utils.set_progress_bar_global_hook(previous_hook)
        args.preview_method = previous_method


def run_phases(node_classes: dict, model: Any, solver: str, steps: int, latent: dict,
               method: LatentPreviewMethod) -> dict[str, list[tuple[int, int, Any]]]:
    """The progress updates of one Invert and of one Edit, separately."""
    g = guider(node_classes, model, make_cond(1), make_cond(2), 3.0)
    sig = sigmas(node_classes, model, steps)
    with torch.inference_mode():
        with progress_hook(method) as inverting:
            inv, _ = invert(node_classes, g, make_solver(node_classes, solver), sig, latent)
        with progress_hook(method) as editing:
            edit(node_classes, g, inv)
    return {"invert": inverting, "edit": editing}


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_progress_bar_counts_every_step(node_classes, fp32_model, solver):
    """The UI's progress bar goes 1/N ... N/N for Invert and again for Edit (no preview when disabled)."""
    steps = 7
    hook_before = comfy.utils.PROGRESS_BAR_HOOK
    phases = run_phases(node_classes, fp32_model, solver, steps, random_latent(), LatentPreviewMethod.NoPreviews)
    assert comfy.utils.PROGRESS_BAR_HOOK is hook_before
    for phase, updates in phases.items():
        assert [(v, t) for v, t, _ in updates] == [(k, steps) for k in range(1, steps + 1)], phase
        assert all(p is None for _, _, p in updates), phase


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_latent_previews_during_invert_and_edit(node_classes, fp32_model, solver):
    """With Latent2RGB previews on, every step sends an RGB image of the latent's size (first batch item)."""
    steps, height, width = 6, 8, 12
    method_before = args.preview_method
    latent = random_latent((2, 4, height, width), seed=9)
    phases = run_phases(node_classes, fp32_model, solver, steps, latent, LatentPreviewMethod.Latent2RGB)
    assert args.preview_method is method_before
    for phase, updates in phases.items():
        assert len(updates) == steps, phase
        images = []
        for _, _, preview in updates:
            assert preview is not None, phase
            fmt, image, max_size = preview
            assert fmt == "JPEG" and isinstance(image, Image.Image) and max_size > 0
            assert image.mode == "RGB" and image.size == (width, height), (image.mode, image.size)
            images.append(image.tobytes())
        assert len(set(images)) > 1, f"{phase}: the preview never changed"


# --- batches -----------------------------------------------------------------------------------------


def batch_inversions(node_classes: dict, model: Any, batches: list[torch.Tensor]) -> list[tuple[Any, dict]]:
    """BDIA inversions (cfg 3, 10 steps) of each batch through the same guider."""
    g = guider(node_classes, model, make_cond(1), make_cond(2), 3.0)
    sig = sigmas(node_classes, model, 10)
    sampler = make_solver(node_classes, "bdia")
    with torch.inference_mode():
        return [invert(node_classes, g, sampler, sig, {"samples": b}) for b in batches]


def assert_same_element(a: tuple[Any, dict], i: int, b: tuple[Any, dict], j: int) -> None:
    """Element i of inversion a has the z_T and state of element j of inversion b (1e-6 relative)."""
    (inv_a, z_a), (inv_b, z_b) = a, b
    assert relative(z_a["samples"][i], z_b["samples"][j]) <= 1e-6, (i, j, relative(z_a["samples"][i],
                                                                                   z_b["samples"][j]))
    for k in inv_b.latents:
        assert relative(inv_a.latents[k][i], inv_b.latents[k][j]) <= 1e-6, (i, j, k)


def test_batch_roundtrip_exact_per_element(node_classes, fp32_model):
    """Three different latents in one batch each come back exactly (errors are not averaged away)."""
    latent = {"samples": torch.cat([random_latent(seed=s)["samples"] for s in (11, 12, 13)])}
    g = guider(node_classes, fp32_model, make_cond(1), make_cond(2), 3.0)
    with torch.inference_mode():
        inv, _ = invert(node_classes, g, make_solver(node_classes, "bdia"), sigmas(node_classes, fp32_model, 10),
                        latent)
        rec = edit(node_classes, g, inv)["samples"]
    assert rec.shape == latent["samples"].shape
    for i in range(3):
        assert relative(rec[i], latent["samples"][i]) <= 1e-5, (i, relative(rec[i], latent["samples"][i]))


def test_batch_elements_do_not_depend_on_each_other(node_classes, fp32_model):
    """Replacing or reordering the other elements of a batch leaves an element's inversion unchanged."""
    a, b, c, d, e = (random_latent(seed=s)["samples"] for s in (11, 12, 13, 14, 15))
    base, replaced, permuted = batch_inversions(node_classes, fp32_model, [torch.cat([a, b, c]),
                                                                           torch.cat([a, d, e]),
                                                                           torch.cat([b, c, a])])
    assert_same_element(base, 0, replaced, 0)
    for i, j in ((0, 2), (1, 0), (2, 1)):
        assert_same_element(base, i, permuted, j)


def test_batch_element_inverts_as_it_would_alone(node_classes, host):
    """Each element of a batch of 3 inverts to the z_T it gets alone.

    Run on a float64 network: a float32 one is not batch-size invariant on the CPU (one evaluation of
    a batch of 3 and of 1 differ by ~1e-6 relative, from the kernels' blocking), and the inversion
    amplifies that to ~1e-4 (BDIA) or ~3e-3 (EDICT) in z_T at cfg 3, which is not cross-talk.
    """
    model = make_model(0, dtype=torch.float64)
    parts = [random_latent(seed=s)["samples"] for s in (11, 12, 13)]
    batched, *alone = batch_inversions(node_classes, model, [torch.cat(parts), *parts])
    for i, single in enumerate(alone):
        assert_same_element(batched, i, single, 0)
