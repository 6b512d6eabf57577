"""Rex: exactly reversible Runge-Kutta for the diffusion ODE (Blasingame and Liu, "Rex: Reversible Solvers for
Diffusion Models", arXiv 2502.08834; official code zblasingame/Rex-solver, ``image-experiments/samplers/rex.py``
``RexTorchdynWrapper``; algorithms.md section 9.2).

An explicit RK increment Psi_h in a reparameterised ODE, made exactly invertible by McCallum and Foster's coupling
of two states (x, xhat) with mixing weight zeta. In the coordinates y = kappa(sigma) * x of the chosen form
(kappa = scale / w: the weight w of section 9.2 seen from ComfyUI's x), one sampling step s_n -> s_{n+1} is

    y_{n+1}    = zeta * y_n + (1 - zeta) * yhat_n + Psi_{+h}(yhat_n)       (Psi started at s_n)
    yhat_{n+1} = yhat_n - Psi_{-h}(y_{n+1})                                (Psi started at s_{n+1})

which is section 9.2's forward step divided by w_{n+1}; the inversion undoes it in reverse order, re-evaluating
Psi on the same states, so ``sample(invert(x))`` returns x up to rounding. The mixing combines states at the same
level, so it reads the same in every coordinate system. 2 x stages model calls per step.

Forms (``prediction``), with alpha, sigma_m the model's own coefficients (schedule.py):

* ``data`` (default): w = sigma_m, time tau = alpha / sigma_m = e^lambda, dy/dtau = x0_hat. In ComfyUI's
  coordinates y = x / sigma for vp and flow alike; tau = 1/sigma (vp), (1 - sigma)/sigma (flow).
* ``noise``: w = alpha, tau = sigma_m / alpha, dy/dtau = eps_hat. For vp, y is ComfyUI's x and tau its sigma;
  for flow y = x / (1 - sigma), tau = sigma / (1 - sigma).

Stages sit at the inverse-mapped levels sigma(tau_n + c_j h); a stage with c = 0 or 1 gets the grid level itself.
Euler is DDIM in either form.

Where a form's time is infinite (its w is 0) the step cannot be taken in it: data at sigma = 0, noise at flow's
sigma = 1. The reference clamps sigma and alpha at eps = 2e-4, which there is harmless only because its grids
stop at t = eps > 0; on a level with w = 0 the clamped step multiplies the state by w_{n+1} = 0 and cannot be
inverted. Here such a step (the last step of every ComfyUI grid, which ends at 0, and with ``prediction='noise'``
flow's first step from sigma = 1) is a coupled DDIM step instead: the same coupling with the Euler tableau in
ComfyUI's own coordinates (y = x, tau = sigma, dy/dtau = d = (x - x0_hat)/sigma), regular at both ends, so it
stays exactly invertible. The model is never called at sigma = 0: Psi_{-h} started at the clean end evaluates
the clean state with the step's noisier label (``base.relabel``; DDIM inversion's "next" label from 0). Those
steps cost 2 model calls and are first order. Flow's sigma = 1 is regular in the data form (tau = 0, w = 1), so
with the default form every flow step but the last is a full Rex step.

Numerics measured on the closed-form bed (tests/unit/test_rex.py):

* The two forms are the same algorithm in different coordinates, but not equally stable. The coupling's parasitic
  mode (the x - xhat difference) grows in one direction as the ODE contracts in the other. In the noise form the
  state's noise part scales with tau, so sampling amplifies any x - xhat mismatch by about tau_max / tau_min over
  the grid (``noise_form_gain``: 5e2 for a ComfyUI vp grid, 1e2 to 4e4 measured): float64 round trips reach 2e-11,
  float32 ones 1e-3, and noise-form sampling is 10-100x less accurate. The data form (default) keeps that gain
  near 1 (round trips <= 3e-14); its inversion is where x and xhat drift apart instead (O(1) relative at the top
  of the bed's grids), which does not affect exactness.
* zeta < 1 adds an error (1 - zeta) * O(h^p) for tableaux of even order p and (1 - zeta) * O(h^(p-1)) for odd p
  (about 4e-5 relative for euler, independent of the step count while N << 1/(1 - zeta)); even orders are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from .base import Denoiser, Solver, relabel
from .ees import Tableau
from .schedule import Schedule

Form = Literal["data", "noise"]
Frame = Literal["data", "noise", "comfy"]

#: (1/zeta)^N above which ``warnings`` reports how far inversion pulls x and xhat apart.
AMPLIFICATION_WARN = 10.0
#: noise-form sampling gain (see ``noise_form_gain``) above which ``warnings`` recommends the data form.
NOISE_GAIN_WARN = 100.0


def _tableau(name: str, a: list[list[float]], b: list[float]) -> Tableau:
    """An explicit tableau from its strictly lower rows; c is the row sums (consistent by construction)."""
    n = len(b)
    rows = tuple(tuple(row) + (0.0,) * (n - len(row)) for row in a)
    return Tableau(name=name, a=rows, b=tuple(b), c=tuple(float(sum(row)) for row in a))


#: The reference's fixed-step tableaux (``rk_tableaus.py``), in exact float64 (the reference builds them as
#: float32 tensors, so its 1/3, 1/6, 2/3 carry ~1e-8 relative rounding even in a float64 run).
REX_TABLEAUX: dict[str, Tableau] = {
    t.name: t
    for t in (
        _tableau("euler", [[]], [1.0]),
        _tableau("midpoint", [[], [0.5]], [0.0, 1.0]),
        _tableau("heun", [[], [1.0]], [0.5, 0.5]),
        _tableau("ralston", [[], [2 / 3]], [0.25, 0.75]),
        _tableau("ssprk3", [[], [1.0], [0.25, 0.25]], [1 / 6, 1 / 6, 2 / 3]),
        _tableau("rk4", [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        _tableau("rk38", [[], [1 / 3], [-1 / 3, 1.0], [1.0, -1.0, 1.0]], [1 / 8, 3 / 8, 3 / 8, 1 / 8]),
    )
}


@dataclass(frozen=True)
class _Coords:
    """One step's coordinates as functions of ComfyUI's sigma: y = kappa * x, time tau, dy/dtau = field.

    Closed forms per frame (section 9.2 rewritten in ComfyUI's x; no formula divides by a weight that is 0 on a
    level the frame is used at): data kappa = 1/s; noise kappa = 1 (vp) or 1/(1 - s) (flow); comfy kappa = 1.
    """

    frame: Frame
    schedule: Schedule

    @property
    def flow(self) -> bool:
        return self.schedule.kind == "flow"

    def kappa(self, s: Tensor) -> Tensor:
        if self.frame == "data":
            return 1.0 / s
        if self.frame == "noise" and self.flow:
            return 1.0 / (1.0 - s)
        return torch.ones_like(s)

    def tau(self, s: Tensor) -> Tensor:
        if self.frame == "data":
            return (1.0 - s) / s if self.flow else 1.0 / s
        if self.frame == "noise" and self.flow:
            return s / (1.0 - s)
        return s

    def sigma_at(self, tau: Tensor) -> Tensor:
        """Inverse of ``tau``: the ComfyUI sigma at which a stage at time tau calls the model."""
        if self.frame == "data":
            return 1.0 / (1.0 + tau) if self.flow else 1.0 / tau
        if self.frame == "noise" and self.flow:
            return tau / (1.0 + tau)
        return tau

    def field(self, x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
        """dy/dtau from the model input x at label sigma and its x0_hat: x0_hat, eps_hat or d."""
        if self.frame == "data":
            return denoised
        sg = sigma.to(x.dtype)
        if self.frame == "noise" and self.flow:
            return (x - (1.0 - sg) * denoised) / sg
        return (x - denoised) / sg


def _pair(latents: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(x, xhat) from ``invert``'s output, or xhat = x for plain generation from ``{"x": noise}``."""
    x = latents["x"]
    y = latents.get("y", x)
    if y.shape != x.shape:
        raise ValueError(f"Rex latents: 'y' has shape {tuple(y.shape)} but 'x' has {tuple(x.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError("Rex latents: 'y' contains NaN or infinity")
    return x, y


class Rex(Solver):
    """Exact inversion with McCallum-Foster coupled RK on (x, xhat); 2 x stages model calls per step.

    State and latents: ``"x"`` and ``"y"`` (= xhat), both in ComfyUI's coordinates at the same level.
    """

    name = "rex"
    latent_names = ("x", "y")
    exact = True

    def __init__(self, tableau: str = "euler", prediction: Form = "data", zeta: float = 0.999,
                 state_dtype: str = "float64") -> None:
        super().__init__(state_dtype)
        if tableau not in REX_TABLEAUX:
            raise ValueError(f"tableau must be one of {sorted(REX_TABLEAUX)}, got {tableau!r}")
        if prediction not in ("data", "noise"):
            raise ValueError(f"prediction must be one of ['data', 'noise'], got {prediction!r}")
        if isinstance(zeta, bool) or not isinstance(zeta, (int, float)) or not 0.0 < float(zeta) <= 1.0:
            raise ValueError(f"zeta must be a number in (0, 1], got {zeta!r}")
        self.tableau_name = tableau
        self.tableau = REX_TABLEAUX[tableau]
        self.prediction: Form = prediction
        self.zeta = float(zeta)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "tableau": self.tableau_name, "prediction": self.prediction, "zeta": self.zeta}

    def nfe_per_step(self) -> int:
        """2 x stages; a coupled DDIM step (to sigma = 0, or noise form from flow's sigma = 1) costs 2."""
        return 2 * self.tableau.stages

    def amplification(self, steps: int) -> float:
        """(1/zeta)^N: how much inversion can grow the x - xhat difference (and rounding with it)."""
        return math.exp(min(steps * -math.log(self.zeta), 700.0))

    @staticmethod
    def noise_form_gain(sigmas: Tensor, schedule: Schedule) -> float:
        """tau_max / tau_min of the noise form's time over the levels where it is used (not 0, not flow's 1).

        Roughly how much noise-form sampling amplifies a difference between x and xhat: its parasitic mode grows
        like the inverse of the tau ratio of each step (tau ~ the noise level, which sampling shrinks). The data
        form's y = x / sigma takes that linear part out, so its gain stays near 1 (measured 0.1 to 5 on the bed).
        """
        s = sigmas.detach().to("cpu", torch.float64)
        keep = s > 0
        if schedule.kind == "flow":
            keep &= s < 1
        inner = s[keep]
        if inner.numel() < 2:
            return 1.0
        tau = _Coords("noise", schedule).tau(inner)
        return float(tau.max() / tau.min())

    def warnings(self, sigmas: Tensor, schedule: Schedule) -> list[str]:
        out = super().warnings(sigmas, schedule)
        s = sigmas.detach().to("cpu", torch.float64)
        steps = len(s) - 1
        eps = torch.finfo(self.state_dtype).eps
        zeta_amp = self.amplification(steps)
        gain = self.noise_form_gain(s, schedule) if self.prediction == "noise" else 1.0
        if zeta_amp * gain * eps >= 1.0:
            noise = f" times the noise form's gain ~{gain:.2g}" if gain > 1.0 else ""
            raise ValueError(
                f"Rex: zeta = {self.zeta:g} over {steps} steps amplifies rounding by (1/zeta)^N = {zeta_amp:.2g}"
                f"{noise}, beyond {self.state_dtype_name} precision: no digit of the round trip would survive. "
                "Raise zeta (default 0.999), use fewer steps or prediction='data'."
            )
        if zeta_amp > AMPLIFICATION_WARN:
            out.append(
                f"Rex: zeta = {self.zeta:g} over {steps} steps lets inversion grow the x - y difference and rounding "
                f"by up to (1/zeta)^N = {zeta_amp:.2g}; the round trip may lose ~{zeta_amp * eps:.1g} relative. Raise "
                "zeta (default 0.999)."
            )
        if gain > NOISE_GAIN_WARN:
            out.append(
                f"Rex: the noise form's sampling amplifies any x - y difference (the coupling's defect, rounding, an "
                f"edit of one of the pair) by up to ~{gain:.2g} on this grid, so it samples less accurately and a "
                f"{self.state_dtype_name} round trip may be off by ~{gain * eps:.1g}. Use prediction='data' "
                "(the default), whose gain stays near 1."
            )
        if self.prediction == "noise" and schedule.kind == "flow" and bool(s[0] >= 1.0):
            out.append(
                "Rex: the noise form's time is infinite at flow's sigma = 1, so the first step is a coupled DDIM step "
                "(still exact, but first order). Use prediction='data' (the default), which is regular there."
            )
        return out

    # --- the loop's pieces -----------------------------------------------------------------------------

    def start_inversion(self, x, s, schedule):
        return {"x": x, "y": x}

    def start_sampling(self, x, latents, s, schedule):
        _, y = _pair(latents)
        return {"x": x, "y": y.to(self.state_dtype)}

    def hook_view(self, state, s, i, schedule):
        return {"x": state["x"], "y": state["y"]}

    def from_hook(self, state, given, view, s, i, schedule):
        return {"x": view.get("x", state["x"]), "y": view.get("y", state["y"])}

    def sample_step(self, denoise, state, s, i, schedule):
        """One step down; ``denoised`` is x0_hat of the new x at s[i + 1] (the first call of Psi_{-h}; at the
        step to 0 that call carries the label s[i])."""
        x, xhat, denoised = self._forward(denoise, state["x"], state["y"], s[i], s[i + 1], schedule)
        return {"x": x, "y": xhat}, denoised

    def invert_step(self, denoise, state, s, i, schedule):
        # undoes sampling step i - 1 (s[i - 1] -> s[i])
        x, xhat, denoised = self._backward(denoise, state["x"], state["y"], s[i - 1], s[i], schedule)
        return {"x": x, "y": xhat}, denoised, None

    # --- the maths -------------------------------------------------------------------------------------

    def _coords(self, s_from: Tensor, s_to: Tensor, schedule: Schedule) -> tuple[_Coords, Tableau]:
        """The step's frame and tableau: the chosen form, or a coupled DDIM step where its time is infinite."""
        singular = bool(s_to == 0) or (self.prediction == "noise" and schedule.kind == "flow" and bool(s_from >= 1))
        if singular:
            return _Coords("comfy", schedule), REX_TABLEAUX["euler"]
        return _Coords(self.prediction, schedule), self.tableau

    def _psi(self, denoise: Denoiser, coords: _Coords, tab: Tableau, x: Tensor, s_a: Tensor, s_b: Tensor,
             schedule: Schedule) -> tuple[Tensor, Tensor]:
        """Psi: the RK increment in y from level s_a to s_b, started at ComfyUI's x; and the first stage's x0_hat.

        A stage at sigma = 0 (only Psi_{-h} started at the clean end, in the comfy frame) gets the clean state with
        the step's noisier label, so the model never sees sigma = 0.
        """
        dt = x.dtype
        t_a = coords.tau(s_a)
        h = coords.tau(s_b) - t_a
        y = coords.kappa(s_a).to(dt) * x
        ks: list[Tensor] = []
        first: Tensor | None = None
        for j in range(tab.stages):
            c = tab.c[j]
            sj = s_a if c == 0.0 else s_b if c == 1.0 else coords.sigma_at(t_a + c * h)
            if j == 0:
                xj = x  # the stored state itself: bit-identical model input in both directions
            else:
                yj = y
                for m, a in enumerate(tab.a[j][:j]):
                    if a != 0.0:
                        yj = yj + (h * a).to(dt) * ks[m]
                xj = yj / coords.kappa(sj).to(dt)
            label = sj
            if bool(sj == 0):
                label = torch.maximum(s_a, s_b)
                xj = relabel(xj, schedule, sj, label)
            denoised = denoise(xj, label).to(dt)
            ks.append(coords.field(xj, label, denoised))
            first = denoised if first is None else first
        incr = torch.zeros_like(x)
        for bj, kj in zip(tab.b, ks, strict=True):
            if bj != 0.0:
                incr = incr + (h * bj).to(dt) * kj
        assert first is not None
        return incr, first

    def _forward(self, denoise: Denoiser, x: Tensor, xhat: Tensor, s_n: Tensor, s_n1: Tensor, schedule: Schedule
                 ) -> tuple[Tensor, Tensor, Tensor]:
        """One sampling step s_n -> s_n1; returns the new pair and x0_hat of the new x (at s_n1's stage)."""
        coords, tab = self._coords(s_n, s_n1, schedule)
        dt = x.dtype
        k_n, k_n1 = coords.kappa(s_n).to(dt), coords.kappa(s_n1).to(dt)
        yhat = k_n * xhat
        psi_fwd, _ = self._psi(denoise, coords, tab, xhat, s_n, s_n1, schedule)
        x_new = (self.zeta * (k_n * x) + (1.0 - self.zeta) * yhat + psi_fwd) / k_n1
        psi_bwd, denoised = self._psi(denoise, coords, tab, x_new, s_n1, s_n, schedule)
        xhat_new = (yhat - psi_bwd) / k_n1
        return x_new, xhat_new, denoised

    def _backward(self, denoise: Denoiser, x: Tensor, xhat: Tensor, s_n: Tensor, s_n1: Tensor, schedule: Schedule
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """Exact inverse of ``_forward``: from the pair at s_n1 back to s_n, undoing its two updates in reverse."""
        coords, tab = self._coords(s_n, s_n1, schedule)
        dt = x.dtype
        k_n, k_n1 = coords.kappa(s_n).to(dt), coords.kappa(s_n1).to(dt)
        psi_bwd, _ = self._psi(denoise, coords, tab, x, s_n1, s_n, schedule)
        yhat = k_n1 * xhat + psi_bwd
        xhat_old = yhat / k_n
        psi_fwd, denoised = self._psi(denoise, coords, tab, xhat_old, s_n, s_n1, schedule)
        x_old = (k_n1 * x - (1.0 - self.zeta) * yhat - psi_fwd) / (self.zeta * k_n)
        return x_old, xhat_old, denoised
