"""O-BELM (solvers/belm.py): exact round trip, second order, parity with the authors' code, plain generation.

Observed on this test bed (float64 unless noted):

* round trip sample(invert(x)): <= 4e-15 on every vp grid; flow on G.comfy_grid up to 2.4e-13 (50 steps,
  w = 7.5): shift-3 grids have steps 9 times larger at the clean end, so sampling amplifies the parasitic
  mode's rounding by up to ``sampling_gain`` ~ 81, and strong CFG adds about as much again.
* float32 state and model: vp <= 2e-6; flow comfy grids 3e-6 (w = 1) to 2.4e-4 (50 steps, w = 7.5).
  Asserted: <= 1e-5 (the bound EDICT and BDIA meet) times ``sampling_gain(grid)``: 1, 2.3 and 20 on the vp
  Karras grids of 10/20/50 steps (their last step, 0.0292 -> 0, outgrows the ones before it), 49-73 on the flow
  grids; ``warnings`` reports large gains for float32 states.
* sampling order (lambda grids, N = 10..160): 1.98 (eps), 2.01 (flow).
* parity with the transcribed reference: sampling <= 1.4e-14; inversion <= 9e-14 on the authors' 50- and
  200-step grids, elsewhere within its conditioning (3e-11 at 2 steps; see test_parity_with_reference_inversion).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from solvers import BDIA, Schedule
from solvers.belm import BELM, belm_coefficients, sampling_gain
from testbed import gmm as G

torch.set_num_threads(1)

PREDICTIONS = ["eps", "v", "flow"]
STEPS = [10, 20, 50]
CFGS = [1.0, 3.0, 7.5]


# --- exact round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps", STEPS)
def test_roundtrip_float64(bed, prediction, steps: int) -> None:
    sched = Schedule.for_prediction(prediction)
    for grid in (G.comfy_grid(prediction, steps), G.lambda_grid(prediction, steps)):
        x0 = bed.clean(prediction, grid)
        for w in CFGS:
            err = G.roundtrip(BELM(), bed.denoiser(prediction, w), x0, grid, sched)
            assert err <= 1e-12, (prediction, steps, w, float(grid[-1]), err)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("steps", STEPS)
def test_roundtrip_float32(bed, prediction, steps: int) -> None:
    """float32 state and float32 model; the bound scales with the grid's sampling gain (module docstring)."""
    grid = G.comfy_grid(prediction, steps)
    sched = Schedule.for_prediction(prediction)
    x0 = bed.clean(prediction, grid).float()
    gain = sampling_gain(grid)
    assert (1.0 <= gain < 25) if prediction != "flow" else (40 < gain < 90), gain
    for w in CFGS:
        den = bed.denoiser(prediction, w, model_dtype=torch.float32)
        err = G.roundtrip(BELM("float32"), den, x0, grid, sched)
        assert err <= 1e-5 * gain, (prediction, steps, w, gain, err)


def test_exact_with_float32_model_in_float64_state(bed) -> None:
    grid = G.comfy_grid("eps", 20)
    den = bed.denoiser("eps", 3.0, model_dtype=torch.float32)
    assert G.roundtrip(BELM(), den, bed.clean("eps", grid), grid, Schedule("vp")) <= 1e-12


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_one_and_two_step_grids(bed, prediction) -> None:
    """1 step: inversion is one DDIM step and x_next is the input itself (bit-exact back, and warned about);
    2 steps: one BELM step each way. Plain generation on 1 step is one DDIM step."""
    sched = Schedule.for_prediction(prediction)
    den = bed.denoiser(prediction, 3.0)
    top = 1.0 if prediction == "flow" else 3.0
    one = torch.tensor([top, 0.0], dtype=torch.float64)
    x0 = bed.clean(prediction, one)
    lat = BELM().invert(den, x0, one, sched)
    assert torch.equal(lat["x_next"], x0)
    assert torch.equal(BELM().sample(den, lat, one, sched), x0)
    assert any("1-step grid" in w for w in BELM().warnings(one, sched))
    xT = bed.noisy(prediction, one)
    assert torch.equal(BELM().sample(den, {"x": xT}, one, sched), den(xT, one[0]))  # DDIM to sigma = 0
    two = torch.tensor([top, 0.4, 0.0], dtype=torch.float64)
    assert BELM().warnings(two, sched) == []
    assert G.roundtrip(BELM(), den, bed.clean(prediction, two), two, sched) <= 1e-14


def test_warnings() -> None:
    vp, flow = Schedule("vp"), Schedule("flow")
    assert BELM().warnings(G.comfy_grid("eps", 50), vp) == []
    assert BELM().warnings(G.comfy_grid("flow", 50), flow) == []  # float64: gain 81 x 2e-16
    assert BELM("float32").warnings(G.comfy_grid("eps", 50), vp) == []
    (msg,) = BELM("float32").warnings(G.comfy_grid("flow", 50), flow)
    assert "amplifies rounding" in msg and "float64" in msg
    with pytest.raises(ValueError, match="strictly decreasing"):
        BELM().warnings(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), vp)


def test_coefficients() -> None:
    """Uniform steps: leapfrog (r = 1, x_down = x_up + (s_down - s_up) d); the step is second order."""
    assert belm_coefficients(3.0, 2.0, 1.0) == (1.0, -2.0)
    r2, c = belm_coefficients(1.0, 0.6, 0.0)  # h_i = 0.6, h_{i+1} = 0.4: r = 1.5
    assert r2 == pytest.approx(2.25) and c == pytest.approx(-0.6 * 2.5)
    # exact on quadratics x(s) = s^2 (d = 2s): the local error is O(h^3)
    s_up, s, s_down = 1.3, 0.9, 0.2
    r2, c = belm_coefficients(s_up, s, s_down)
    assert s**2 + r2 * (s_up**2 - s**2) + c * 2 * s == pytest.approx(s_down**2, abs=1e-15)
    with pytest.raises(ValueError):
        belm_coefficients(1.0, 1.0, 0.0)


# --- order -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_sampling_order(bed, prediction: str) -> None:
    """Observed 1.98 (eps: 1.4e-2 ... 6.0e-5) and 2.01 (flow: 5.4e-3 ... 2.1e-5) for N = 10..160."""
    from test_convergence_orders import NS, sampling_errors

    errs = sampling_errors(bed, BELM, prediction)
    slope = G.fitted_order(NS, errs)
    assert abs(slope - 2.0) <= 0.35, (prediction, slope, errs)


# --- plain generation, callbacks, NFE, hook ---------------------------------------------------------


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_plain_generation_from_x_only(bed, prediction) -> None:
    grid = G.lambda_grid(prediction, 50)
    den = bed.denoiser(prediction)
    xT = bed.noisy(prediction, grid)
    out = BELM().sample(den, {"x": xT}, grid, Schedule.for_prediction(prediction))
    ref = G.reference_solution(den, prediction, xT, float(grid[0]), float(grid[-1]), tol=1e-9)
    assert G.rel_error(out, ref) < 2e-3


@pytest.mark.parametrize("prediction", ["eps", "flow"])
def test_callbacks_and_nfe(bed, prediction) -> None:
    """One callback per step; 1 model call per step (the inverted pair's first step needs none)."""
    n = 7
    grid = G.comfy_grid(prediction, n)
    sched, den = Schedule.for_prediction(prediction), G.CountingDenoiser(bed.denoiser(prediction, 3.0))
    solver = BELM()
    assert solver.nfe_per_step() == 1
    seen: list[tuple[int, int, bool]] = []

    def record(i, total, x, denoised):
        seen.append((i, total, denoised is not None))

    lat = solver.invert(den, bed.clean(prediction, grid), grid, sched, callback=record)
    assert den.calls == n and seen == [(i, n, True) for i in range(n)]
    den.calls, seen[:] = 0, []
    solver.sample(den, lat, grid, sched, callback=record)
    assert den.calls == n - 1 and seen == [(0, n, False)] + [(i, n, True) for i in range(1, n)]
    den.calls, seen[:] = 0, []
    solver.sample(den, {"x": bed.noisy(prediction, grid)}, grid, sched, callback=record)
    assert den.calls == n and seen == [(i, n, True) for i in range(n)]


def test_hook_view_and_params(bed) -> None:
    grid = G.comfy_grid("eps", 6)
    sched, den = Schedule("vp"), bed.denoiser("eps", 3.0)
    solver = BELM()
    lat = solver.invert(den, bed.clean("eps", grid), grid, sched)
    views: list[dict[str, torch.Tensor]] = []

    def hook(step, state, denoised):
        views.append({k: v.clone() for k, v in state.items()})
        return state

    assert torch.equal(solver.sample(den, lat, grid, sched, hook=hook), solver.sample(den, lat, grid, sched))
    assert all(set(v) == {"x", "x_prev"} for v in views)
    assert torch.equal(views[0]["x"], lat["x_next"]) and torch.equal(views[0]["x_prev"], lat["x"])
    assert all(torch.equal(views[k]["x_prev"], views[k - 1]["x"]) for k in range(1, len(views)))
    assert BELM.from_params(solver.params()).params() == {"state_dtype": "float64"}
    assert BELM.name == "belm" and BELM.exact and BELM.latent_names == ("x", "x_next")
    with pytest.raises(ValueError, match="x_next"):
        solver.sample(den, {"x": lat["x"], "x_next": lat["x_next"][:2]}, grid, sched)


def test_inverted_noise_is_as_good_as_bdia(bed) -> None:
    """Not only exact: on a single Gaussian (exact transport known) the inverted x_T is as close to the true
    ODE inversion as BDIA's (observed 1.9e-3 vs 6.8e-4 at 50 Karras steps, 1.3e-2 vs 2.4e-2 at 10)."""
    g = G.gaussian(dim=4, std=0.5)
    den, sched = G.denoiser("eps", g), Schedule("vp")
    for n in (10, 50):
        grid = G.comfy_grid("eps", n)
        ref = G.gaussian_exact(g, "eps", bed.data, 0.0, float(grid[0]))
        belm = G.rel_error(BELM().invert(den, bed.data, grid, sched)["x"], ref)
        bdia = G.rel_error(BDIA().invert(den, bed.data, grid, sched)["x"], ref)
        assert belm < max(3 * bdia, 5e-3), (n, belm, bdia)


# --- parity with the authors' code --------------------------------------------------------------------
#
# A transcription, in our own words, of zituitui/BELM samplers/BELM.py (commit aa09c5e):
# ``latent_to_intermediate`` (inversion) and ``intermediate_to_latent`` (sampling, freeze_step = 0), in the
# reference's own VP coordinates: a discrete SD schedule (scaled_linear betas 0.00085..0.012, 1000 steps),
# alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), latents z = alpha_t x0 + sigma_t eps, an eps-network
# eps(z, t) with an integer timestep, a final clean level with alpha = 1, and the authors' DDIMScheduler with
# timestep_spacing="linspace" (samplers/test_sd15.py: timesteps 999 ... 0).


def _abar() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0)


def _timesteps(n: int, spacing: str) -> list[int]:
    if spacing == "linspace":  # the authors' scheduler: 999 ... 0
        return [int(t) for t in np.linspace(0, 999, n).round()[::-1]]
    return [k * (1000 // n) + 1 for k in range(n)][::-1]  # "leading" with steps_offset = 1: ... 1


def _sigma_over_alpha(a: float | torch.Tensor) -> float:
    """The reference's time variable sigma/alpha of a level with cumulative alpha a (0 at the clean level)."""
    a = float(a)
    return (1.0 - a) ** 0.5 / a**0.5


class _Reference:
    """The reference's two loops on one eps function; levels are cumulative alphas (1.0 = clean)."""

    def __init__(self, bed: G.Bed, w: float, mixture: tuple[G.GMM, G.GMM | None] | None = None) -> None:
        self.abar = _abar()
        self.cond, self.uncond = mixture if mixture is not None else (bed.cond, bed.uncond)
        self.w = w

    def eps(self, z: torch.Tensor, t: int) -> torch.Tensor:
        """The ideal eps-network at timestep t: the mixture's eps for the VP state z at sigma/alpha of t."""
        return G.prediction_of(self.cond, self.uncond, self.w, "eps", z, _sigma_over_alpha(self.abar[t]))

    def invert(self, z0: torch.Tensor, ts: list[int], startup_t: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """latent_to_intermediate: returns (z at ts[0], z at ts[1]) (for 1 step: (z at ts[0], z0))."""
        n, zs = len(ts), [z0]
        for i in range(n):
            k = n - 1 - i  # target level ts[k]; the current level is ts[k + 1], or clean for the first step
            e = self.eps(zs[-1], ts[k + 1] if k < n - 1 else startup_t)  # the first step: timestep 1, verbatim
            a_to, a_at = float(self.abar[ts[k]]), (float(self.abar[ts[k + 1]]) if k < n - 1 else 1.0)
            al_to, sg_to, al_at, sg_at = a_to**0.5, (1 - a_to) ** 0.5, a_at**0.5, (1 - a_at) ** 0.5
            if i == 0:  # DDIM inversion from the clean latent
                zs.append((al_to / al_at) * zs[-1] + (sg_to - (al_to / al_at) * sg_at) * e)
                continue
            a_below = 1.0 if i == 1 else float(self.abar[ts[k + 2]])
            al_below, sg_below = a_below**0.5, (1 - a_below) ** 0.5
            h_up = sg_to / al_to - sg_at / al_at  # paper's h_i (this step)
            h_low = sg_at / al_at - sg_below / al_below  # paper's h_{i-1} (the step below)
            zs.append((al_to / al_below) * h_up**2 / h_low**2 * zs[-2]
                      + (al_to / al_at) * (h_low**2 - h_up**2) / h_low**2 * zs[-1]
                      + al_to * (h_low + h_up) * h_up / h_low * e)
        return zs[-1], zs[-2]

    def sample(self, z_top: torch.Tensor, z_second: torch.Tensor | None, ts: list[int]) -> torch.Tensor:
        """intermediate_to_latent (freeze_step 0): the pair, or DDIM start-up without z_second; ends at alpha = 1."""
        n, zs, z = len(ts), [z_top], z_top
        for i, t in enumerate(ts):
            e = self.eps(z, t)  # the reference calls the network at i = 0 even when the pair makes it unused
            a_t, a_s = float(self.abar[t]), (float(self.abar[ts[i + 1]]) if i < n - 1 else 1.0)
            al_t, sg_t, al_s, sg_s = a_t**0.5, (1 - a_t) ** 0.5, a_s**0.5, (1 - a_s) ** 0.5
            if i == 0:
                z = z_second.clone() if z_second is not None else (al_s / al_t) * z + (sg_s - sg_t * al_s / al_t) * e
            else:
                a_p = float(self.abar[ts[i - 1]])
                al_p, sg_p = a_p**0.5, (1 - a_p) ** 0.5
                t_p, t_t, t_s = sg_p / al_p, sg_t / al_t, sg_s / al_s
                d1, d2, d3 = t_t - t_p, t_s - t_t, t_s - t_p
                z = (d2 * d3 * al_s / d1) * e + (d2 / d1) ** 2 * (al_s / al_p) * zs[-2] \
                    + (d1 - d2) * d3 / d1**2 * (al_s / al_t) * zs[-1]
            zs.append(z)
        return zs[-1]


def _comfy_grid(ref: _Reference, ts: list[int]) -> torch.Tensor:
    """The same levels as ComfyUI sigmas (sigma/alpha), ending at the clean level 0."""
    return torch.tensor([_sigma_over_alpha(ref.abar[t]) for t in ts] + [0.0], dtype=torch.float64)


def _alpha(ref: _Reference, t: int) -> float:
    return float(ref.abar[t]) ** 0.5


def _ulp_sensitivity(bed: G.Bed, w: float, grid: torch.Tensor, lat: dict[str, torch.Tensor]) -> float:
    """How far our inverted pair moves when the clean latent moves by one ulp: the inversion's conditioning."""
    x1 = torch.nextafter(bed.data, torch.full_like(bed.data, 10.0))
    moved = BELM().invert(bed.denoiser("eps", w), x1, grid, Schedule("vp"))
    return max(G.rel_error(moved[k], lat[k]) for k in ("x", "x_next"))


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
@pytest.mark.parametrize("steps", [1, 2, 3, 10, 50, 200])
def test_parity_with_reference_inversion(bed, spacing: str, steps: int) -> None:
    """Inversion: our pair equals the reference's (converted x = z / alpha).

    Tolerance: 1e-12 on the authors' scheduler at 50 and 200 steps (observed <= 9e-14). Inversion amplifies the
    recursion's parasitic mode by (h_top / h_bottom)^2 (up to 2.5e5 here), so it is ill-conditioned: one ulp
    more in the clean latent moves the inverted pair by up to 1e-11 (2 steps) and ~4e-13 at 10 steps with
    w = 3. Two float64 evaluations, each rounding a few ulps per step, may then differ by that much: elsewhere
    the bound is max(1e-12, 8 steps x that sensitivity) (observed at most 2.4 steps x sensitivity; 3e-11 at
    2 steps, 1.3e-12 at 10 steps, w = 3).

    Difference from algorithms.md §9.1, decided by the authors' code: none in the recursion. The first inversion
    step's eps is evaluated on the clean latent with timestep 1 (verbatim, as §9.1 says); we give the network the
    clean latent with the first target level's label (DDIM's rule at sigma = 0). With the authors' linspace
    scheduler that target is timestep 0, one training step below 1, so there the transcription is run with
    ``startup_t = ts[-1]``; with "leading" spacing and steps_offset = 1 the target is timestep 1 and the
    reference is run verbatim.
    """
    ts = _timesteps(steps, spacing)
    assert spacing == "linspace" or ts[-1] == 1
    for w in (1.0, 3.0, 7.5):
        ref = _Reference(bed, w)
        grid = _comfy_grid(ref, ts)
        x0 = bed.data  # the clean latent: alpha = 1, so z0 = x0
        z_top, z_second = ref.invert(x0, ts, startup_t=1 if spacing == "leading" else ts[-1])
        lat = BELM().invert(bed.denoiser("eps", w), x0, grid, Schedule("vp"))
        err = max(G.rel_error(lat["x"], z_top / _alpha(ref, ts[0])),
                  G.rel_error(lat["x_next"], z_second / (_alpha(ref, ts[1]) if steps > 1 else 1.0)))
        flat = spacing == "linspace" and steps >= 50
        tol = 1e-12 if flat else max(1e-12, 8 * steps * _ulp_sensitivity(bed, w, grid, lat))
        assert err <= tol, (spacing, steps, w, err, tol)


@pytest.mark.parametrize("steps", [1, 2, 3, 10, 50, 200])
def test_parity_with_reference_sampling(bed, steps: int) -> None:
    """Sampling from a pair and from noise alone: our x at sigma = 0 equals the reference's clean latent to
    1e-12 (observed <= 1.4e-14: sampling damps the parasitic mode on these grids)."""
    ts = _timesteps(steps, "linspace")
    for w in (1.0, 3.0, 7.5):
        ref = _Reference(bed, w)
        grid = _comfy_grid(ref, ts)
        den, sched = bed.denoiser("eps", w), Schedule("vp")
        x_top = G.noised(bed.data, bed.noise, "eps", float(grid[0]))
        x_second = G.noised(bed.data, 0.9 * bed.noise, "eps", float(grid[1]))  # any pair: not just inverted ones
        out = BELM().sample(den, {"x": x_top, "x_next": x_second}, grid, sched)
        alpha_second = _alpha(ref, ts[1]) if steps > 1 else 1.0
        z = ref.sample(x_top * _alpha(ref, ts[0]), x_second * alpha_second, ts)
        assert G.rel_error(out, z) <= 1e-12, (w, steps)
        out = BELM().sample(den, {"x": x_top}, grid, sched)
        assert G.rel_error(out, ref.sample(x_top * _alpha(ref, ts[0]), None, ts)) <= 1e-12, (w, steps)


def test_reference_startup_label_is_the_only_difference(bed) -> None:
    """On the authors' linspace grid the verbatim reference (timestep 1 at the start, one above the target level
    0) gives another pair: the start-up's O(h^2) difference sits in the parasitic mode, which inversion amplifies
    (observed: 100% / 41% apart at 10 steps, 2% at 50). Both pairs go back exactly through the same recursion,
    and on a single Gaussian (exact transport known) our label's x_T is the closer one to the true ODE
    inversion (observed 7.6e-2 vs 1.5e-1 at 20 steps, 1.4e-3 vs 2.7e-3 at 200)."""
    ts = _timesteps(10, "linspace")
    ref = _Reference(bed, 3.0)
    grid = _comfy_grid(ref, ts)
    z_top, z_second = ref.invert(bed.data, ts)  # startup_t = 1, verbatim
    lat = BELM().invert(bed.denoiser("eps", 3.0), bed.data, grid, Schedule("vp"))
    assert G.rel_error(lat["x"], z_top / _alpha(ref, ts[0])) > 1e-2
    back = ref.sample(z_top, z_second, ts)
    ours = BELM().sample(bed.denoiser("eps", 3.0), {"x": z_top / _alpha(ref, ts[0]),
                                                    "x_next": z_second / _alpha(ref, ts[1])}, grid, Schedule("vp"))
    assert G.rel_error(back, bed.data) <= 1e-12 and G.rel_error(ours, bed.data) <= 1e-12

    g = G.gaussian(dim=4, std=0.5)
    ts = _timesteps(20, "linspace")
    grid = _comfy_grid(ref, ts)
    gauss = _Reference(bed, 1.0, (g, None))
    exact = G.gaussian_exact(g, "eps", bed.data, 0.0, float(grid[0]))
    verbatim = G.rel_error(gauss.invert(bed.data, ts)[0] / _alpha(ref, ts[0]), exact)
    mine = G.rel_error(BELM().invert(G.denoiser("eps", g), bed.data, grid, Schedule("vp"))["x"], exact)
    assert mine < 0.7 * verbatim, (mine, verbatim)
