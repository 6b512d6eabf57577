"""Solver nodes: each turns a solver and its parameters into a SAMPLER.

The SAMPLER works in our Invert/Edit nodes and, for plain generation, in the stock
SamplerCustomAdvanced.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..solvers import AIDI, BDIA, BELM, DDIM, EDICT, EES25, EES27, FireFlow, Rex, RFSolver, Solver
from ..solvers.precision import STATE_DTYPE_CHOICES
from ..solvers.rex import REX_TABLEAUX
from .common import CATEGORY, node_id
from .model_adapter import SolverSampler

STATE_DTYPE_TOOLTIP = (
    "Precision of the solver's own state, whatever the model's dtype. float64 keeps exact solvers "
    "exact to the last digit; float32 halves the state's memory. auto: float64 where the model's device has "
    "it, float32 where it does not (Apple MPS), said in the node's report."
)


def state_dtype_input() -> io.Combo.Input:
    return io.Combo.Input("state_dtype", options=list(STATE_DTYPE_CHOICES), default="auto",
                          tooltip=STATE_DTYPE_TOOLTIP)


def state_dtype_only_schema(node: str, display_name: str, description: str) -> io.Schema:
    """The schema of a solver node whose only input is its state dtype (its maths has no parameters)."""
    return io.Schema(node_id=node_id(node), display_name=display_name, category=CATEGORY, description=description,
                     inputs=[state_dtype_input()], outputs=[io.Sampler.Output(display_name="SAMPLER")])


def _make(node: str, build, state_dtype: str, **kwargs) -> io.NodeOutput:
    """Build a solver, turning a parameter error into a message that names the node.

    The solver is built with float64 for ``auto``; the run picks the dtype for the model's device
    (``SolverSampler.solver_on``).
    """
    if state_dtype not in STATE_DTYPE_CHOICES:
        raise ValueError(f"{node}: input 'state_dtype' must be one of {', '.join(STATE_DTYPE_CHOICES)}, "
                         f"got {state_dtype!r}")
    try:
        solver: Solver = build(state_dtype="float64" if state_dtype == "auto" else state_dtype, **kwargs)
    except ValueError as err:
        message = str(err)
        name = next((k for k in kwargs if message.startswith(f"{k} ")), None)
        if name is not None:  # "gamma must be ..." -> "input 'gamma' must be ..."
            message = f"input '{name}'{message[len(name):]}"
        raise ValueError(f"{node}: {message}") from err
    return io.NodeOutput(SolverSampler(solver, node, state_dtype))


class DDIMSolver(io.ComfyNode):
    """DDIM: 1 model evaluation per step; inversion is approximate (first order)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("DDIMSolver"),
            display_name="DDIM Solver",
            category=CATEGORY,
            description="Deterministic DDIM as a SAMPLER. Inverting with it is approximate: the round-trip "
                        "error is small at cfg 1 and grows with cfg. Use EDICT or BDIA for exact inversion.",
            inputs=[
                io.Combo.Input(
                    "inversion_label", options=["current", "next"], default="current",
                    tooltip="Which noise level the model is told during an inversion step: 'current' (the "
                            "step's starting level, DDIM ODE reversal) or 'next' (the 't+1' variant of "
                            "null-text inversion and diffusers' DDIMInverseScheduler).",
                ),
                state_dtype_input(),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER",
                                      tooltip="Use with Invert/Edit, or with SamplerCustomAdvanced to generate.")],
        )

    @classmethod
    def execute(cls, inversion_label: str, state_dtype: str) -> io.NodeOutput:
        return _make("DDIM Solver", DDIM, inversion_label=inversion_label, state_dtype=state_dtype)


class EDICTSolver(io.ComfyNode):
    """EDICT: coupled x/y sequences, exactly invertible, 2 model evaluations per step."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("EDICTSolver"),
            display_name="EDICT Solver",
            category=CATEGORY,
            description="EDICT (Wallace et al. 2023): exact inversion with two coupled latents; reconstructs "
                        "the input to floating-point precision at any cfg. Costs 2 model evaluations per step.",
            inputs=[
                io.Float.Input("p", default=0.93, min=0.5, max=1.0, step=0.005,
                               tooltip="Mixing weight of the two sequences. 0.93 is the paper's value at 50 steps "
                                       "(0.9-0.97 work); lower keeps them closer when sampling but dilates "
                                       "their difference when inverting."),
                io.Combo.Input("p_rule", options=["fixed", "scaled"], default="fixed",
                               tooltip="'scaled' uses p^(50/steps), so other step counts mix as much in total "
                                       "as p does at 50 steps."),
                state_dtype_input(),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER")],
        )

    @classmethod
    def execute(cls, p: float, p_rule: str, state_dtype: str) -> io.NodeOutput:
        return _make("EDICT Solver", EDICT, p=p, p_rule=p_rule, state_dtype=state_dtype)


class BDIASolver(io.ComfyNode):
    """BDIA-DDIM: exactly invertible with 1 model evaluation per step."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("BDIASolver"),
            display_name="BDIA Solver",
            category=CATEGORY,
            description="BDIA-DDIM (Zhang et al. 2024): exact inversion at the cost of DDIM (1 model evaluation "
                        "per step), storing the last two latents. gamma = 1 is second order.",
            inputs=[
                io.Float.Input("gamma", default=1.0, min=0.5, max=1.0, step=0.01,
                               tooltip="Weight of the backward correction. 1.0 (default) is second order and "
                                       "the most stable to invert; the inversion amplifies errors by "
                                       "gamma^-steps: above 1e2 it warns, above 1e6 inversion is refused "
                                       "(the lowest gamma accepted is 0.58 at 25 steps, 0.76 at 50)."),
                state_dtype_input(),
                # last and optional: workflows and API prompts saved before it keep their meaning ("fixed")
                io.Combo.Input("gamma_rule", options=["fixed", "scaled"], default="fixed", optional=True,
                               tooltip="'scaled' uses gamma^(25/steps): gamma is what it means at 25 steps, and "
                                       "other step counts amplify the inversion as much as 25 steps do (gamma 0.8: "
                                       "0.57 at 10 steps, 0.89 at 50; never refused for gamma >= 0.58)."),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER")],
        )

    @classmethod
    def execute(cls, gamma: float, state_dtype: str, gamma_rule: str = "fixed") -> io.NodeOutput:
        return _make("BDIA Solver", BDIA, gamma=gamma, state_dtype=state_dtype, gamma_rule=gamma_rule)


class AIDISolver(io.ComfyNode):
    """AIDI: fixed-point inversion (plain average or Anderson acceleration); samples like DDIM."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("AIDISolver"),
            display_name="AIDI Solver",
            category=CATEGORY,
            description="AIDI (Pan et al. 2023): each inversion step solves for the latent whose DDIM step "
                        "lands exactly on the previous one, by fixed-point iteration. Accurate at cfg 1; "
                        "costs up to max_iter + 1 evaluations per inversion step.",
            inputs=[
                io.Combo.Input("variant", options=["A", "E"], default="A",
                               tooltip="A: Anderson acceleration (fast, converges in a few iterations). "
                                       "E: the paper's 0.5/0.5 averaging."),
                io.Int.Input("max_iter", default=6, min=1, max=50,
                             tooltip="Iteration cap per inversion step (the paper uses 5-11)."),
                io.Float.Input("tol", default=1e-8, min=0.0, max=1e-2, step=1e-9,
                               tooltip="Stop a step early when the relative residual is below this; 0 always "
                                       "runs max_iter."),
                io.Int.Input("window", default=3, min=1, max=8, tooltip="Anderson history length (variant A)."),
                state_dtype_input(),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER")],
        )

    @classmethod
    def execute(cls, variant: str, max_iter: int, tol: float, window: int, state_dtype: str) -> io.NodeOutput:
        return _make("AIDI Solver", AIDI, variant=variant, max_iter=max_iter, tol=tol, window=window,
                     state_dtype=state_dtype)


class EESSolver(io.ComfyNode):
    """EES(2,5) / EES(2,7): explicit Runge-Kutta solvers that are nearly reversible."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("EESSolver"),
            display_name="EES Solver",
            category=CATEGORY,
            description="Explicit and effectively symmetric Runge-Kutta (Shmelev et al.): second order, and "
                        "inverting then sampling returns the input up to O(h^5) or O(h^7). Stages evaluate the "
                        "model between grid levels at their own noise level.",
            inputs=[
                io.Combo.Input("scheme", options=["EES(2,5)", "EES(2,7)"], default="EES(2,5)",
                               tooltip="EES(2,5): 3 evaluations per step, round-trip defect O(h^5). "
                                       "EES(2,7): 4 evaluations per step, O(h^7)."),
                state_dtype_input(),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER")],
        )

    @classmethod
    def execute(cls, scheme: str, state_dtype: str) -> io.NodeOutput:
        schemes = {"EES(2,5)": EES25, "EES(2,7)": EES27}
        if scheme not in schemes:
            raise ValueError(f"EES Solver: input 'scheme' must be one of {sorted(schemes)}, got {scheme!r}")
        return _make("EES Solver", schemes[scheme], state_dtype=state_dtype)


class BELMSolver(io.ComfyNode):
    """O-BELM: exactly invertible two-step method, second order, 1 model evaluation per step."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return state_dtype_only_schema(
            "BELMSolver", "BELM Solver",
            "O-BELM (Wang et al. 2024): exact inversion at DDIM's cost (1 model evaluation per step), "
            "second order on any grid, storing the last two latents like BDIA. Without parameters: its "
            "coefficients come from the step sizes.",
        )

    @classmethod
    def execute(cls, state_dtype: str) -> io.NodeOutput:
        return _make("BELM Solver", BELM, state_dtype=state_dtype)


class RexSolver(io.ComfyNode):
    """Rex: exactly reversible Runge-Kutta (McCallum-Foster coupling), any order, 2 x stages evaluations per step."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("RexSolver"),
            display_name="Rex Solver",
            category=CATEGORY,
            description="Rex (Blasingame & Liu 2025): an explicit Runge-Kutta method made exactly invertible by "
                        "coupling two latents. Higher-order tableaux sample more accurately; each costs 2 model "
                        "evaluations per stage and step (euler: 2, rk4: 8).",
            inputs=[
                io.Combo.Input("tableau", options=list(REX_TABLEAUX), default="euler",
                               tooltip="The Runge-Kutta method: euler (2 evaluations per step), midpoint/heun/"
                                       "ralston (4, second order), ssprk3 (6), rk4/rk38 (8, fourth order)."),
                io.Combo.Input("prediction", options=["data", "noise"], default="data",
                               tooltip="The form the method steps in: data (default; stable, the authors' "
                                       "default) or noise, which amplifies rounding on long grids."),
                io.Float.Input("zeta", default=0.999, min=0.9, max=1.0, step=0.0005,
                               tooltip="Coupling weight: 1 couples the two latents weakest; inversion amplifies "
                                       "rounding by (1/zeta)^steps. The authors use 0.999."),
                state_dtype_input(),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER")],
        )

    @classmethod
    def execute(cls, tableau: str, prediction: str, zeta: float, state_dtype: str) -> io.NodeOutput:
        return _make("Rex Solver", Rex, tableau=tableau, prediction=prediction, zeta=zeta, state_dtype=state_dtype)


class RFSolverNode(io.ComfyNode):
    """RF-Solver: explicit midpoint, the second-order step Flux users invert with; not exact."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return state_dtype_only_schema(
            "RFSolver", "RF-Solver",
            "RF-Solver (Wang et al. 2024): a second-order step (explicit midpoint) for rectified-flow "
            "models such as Flux and SD3, also usable on eps and v models. Inverting with it is not "
            "exact, only far closer than DDIM. 2 model evaluations per step.",
        )

    @classmethod
    def execute(cls, state_dtype: str) -> io.NodeOutput:
        return _make("RF-Solver", RFSolver, state_dtype=state_dtype)


class FireFlowSolver(io.ComfyNode):
    """FireFlow: midpoint with the midpoint velocity reused; 1 evaluation per step; not exact."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return state_dtype_only_schema(
            "FireFlowSolver", "FireFlow Solver",
            "FireFlow (Deng et al. 2025): RF-Solver's midpoint step with each step's midpoint velocity "
            "reused to start the next, so 1 model evaluation per step (2 on the first). Not exact; "
            "at equal evaluations its round trip beats RF-Solver's. Use EDICT or BDIA to be exact.",
        )

    @classmethod
    def execute(cls, state_dtype: str) -> io.NodeOutput:
        return _make("FireFlow Solver", FireFlow, state_dtype=state_dtype)


#: Solver Recipe's choices: each solver at the settings the README recommends (measured by bench/edit_quality.py on
#: the embedded model; BDIA's gamma 0.8 and EDICT's scaled p edit best at 25 steps). The first is the default:
#: exact, DDIM's cost, and its edits read right (README "Which solver when"). BDIA's gamma is scaled from 25 steps
#: (0.57 at 10, 0.89 at 50): its edits beat DDIM's at 10, 25 and 50 steps and no step count is refused (the
#: name, stored in saved graphs, is kept: at 25 steps gamma is 0.8).
RECIPES: dict[str, tuple[type[Solver], dict]] = {
    "BDIA (gamma 0.8)": (BDIA, {"gamma": 0.8, "gamma_rule": "scaled"}),
    "EDICT (p 0.93, scaled)": (EDICT, {"p": 0.93, "p_rule": "scaled"}),
    "Rex (euler)": (Rex, {"tableau": "euler", "prediction": "data", "zeta": 0.999}),
    "BELM": (BELM, {}),
    "DDIM": (DDIM, {"inversion_label": "current"}),
    "AIDI (Anderson)": (AIDI, {"variant": "A", "max_iter": 6, "tol": 1e-8, "window": 3}),
    "EES(2,5)": (EES25, {}),
    "RF-Solver": (RFSolver, {}),
    "FireFlow": (FireFlow, {}),
}


class SolverRecipe(io.ComfyNode):
    """One node for every solver at its recommended settings: the solver choice a blueprint exposes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("SolverRecipe"),
            display_name="Solver (recipe)",
            category=CATEGORY,
            description="Any of the pack's solvers by name, at the settings measured best for edits at about "
                        "25 steps. Use the solver's own node to change its parameters.",
            inputs=[
                io.Combo.Input("solver", options=list(RECIPES), default=next(iter(RECIPES)),
                               tooltip="BDIA (gamma 0.8 at 25 steps, scaled to the step count): exact at DDIM's "
                                       "cost, edits read right more often than DDIM's at 10, 25 and 50 steps. "
                                       "EDICT, Rex, BELM: exact at "
                                       "2x (EDICT, Rex) or 1x the cost. DDIM, AIDI, EES, RF-Solver, FireFlow: "
                                       "approximate inversion."),
                state_dtype_input(),
            ],
            outputs=[io.Sampler.Output(display_name="SAMPLER")],
        )

    @classmethod
    def execute(cls, solver: str, state_dtype: str) -> io.NodeOutput:
        if solver not in RECIPES:
            raise ValueError(f"Solver (recipe): input 'solver' must be one of {', '.join(RECIPES)}, got {solver!r}")
        build, params = RECIPES[solver]
        return _make("Solver (recipe)", build, state_dtype=state_dtype, **params)


NODES = [DDIMSolver, EDICTSolver, BDIASolver, AIDISolver, EESSolver, BELMSolver, RexSolver, RFSolverNode,
         FireFlowSolver, SolverRecipe]
