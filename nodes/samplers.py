"""Solver nodes: each turns a solver and its parameters into a SAMPLER.

The SAMPLER works in our Invert/Edit nodes and, for plain generation, in the stock
SamplerCustomAdvanced.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..solvers import DDIM
from .common import CATEGORY, node_id
from .model_adapter import SolverSampler

STATE_DTYPE_TOOLTIP = (
    "Precision of the solver's own state, whatever the model's dtype. float64 keeps exact solvers "
    "exact to the last digit; float32 halves memory."
)


def state_dtype_input() -> io.Combo.Input:
    return io.Combo.Input("state_dtype", options=["float64", "float32"], default="float64",
                          tooltip=STATE_DTYPE_TOOLTIP)


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
            outputs=[io.Sampler.Output(tooltip="Use with Invert/Edit, or with SamplerCustomAdvanced to generate.")],
        )

    @classmethod
    def execute(cls, inversion_label: str, state_dtype: str) -> io.NodeOutput:
        try:
            solver = DDIM(inversion_label=inversion_label, state_dtype=state_dtype)
        except ValueError as err:
            raise ValueError(f"DDIM Solver: {err}") from err
        return io.NodeOutput(SolverSampler(solver, "DDIM Solver"))


NODES = [DDIMSolver]
