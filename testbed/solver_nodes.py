"""The pack's solver nodes at their defaults (one table for tests and benches), and the invert -> edit round
trip of the host layer (the unit layer's is ``gmm.roundtrip``)."""

from __future__ import annotations

from typing import Any

import torch

#: name -> (node id, widget values): each solver node at the pack's defaults (the papers' settings)
SOLVER_NODES: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("ExactInversion_DDIMSolver", {"inversion_label": "current", "state_dtype": "auto"}),
    "edict": ("ExactInversion_EDICTSolver", {"p": 0.93, "p_rule": "fixed", "state_dtype": "auto"}),
    "bdia": ("ExactInversion_BDIASolver", {"gamma": 1.0, "state_dtype": "auto"}),
    "aidi": ("ExactInversion_AIDISolver", {"variant": "A", "max_iter": 6, "tol": 1e-8, "window": 3,
                                          "state_dtype": "auto"}),
    "ees25": ("ExactInversion_EESSolver", {"scheme": "EES(2,5)", "state_dtype": "auto"}),
    "ees27": ("ExactInversion_EESSolver", {"scheme": "EES(2,7)", "state_dtype": "auto"}),
    "belm": ("ExactInversion_BELMSolver", {"state_dtype": "auto"}),
    "rex": ("ExactInversion_RexSolver", {"tableau": "euler", "prediction": "data", "zeta": 0.999,
                                         "state_dtype": "auto"}),
    "rf_solver": ("ExactInversion_RFSolver", {"state_dtype": "auto"}),
    "fireflow": ("ExactInversion_FireFlowSolver", {"state_dtype": "auto"}),
}
#: the few-step settings of the embedded model's workflows at 25 steps: EDICT's p scaled by its authors' rule,
#: BDIA's gamma 0.8 (measured best there by bench/edit_quality.py; the authors' 0.5 is refused at 25 steps)
FEW_STEPS = {"edict": {"p_rule": "scaled"}, "bdia": {"gamma": 0.8}}


def solver_sampler(node_classes: dict, name: str, **override: Any) -> Any:
    """The SAMPLER of solver ``name`` (a key of SOLVER_NODES), with widget values changed by ``override``."""
    node, kwargs = SOLVER_NODES[name]
    return node_classes[node].execute(**{**kwargs, **override}).result[0]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    return float((a64 - b64).norm() / b64.norm())


def host_roundtrip(node_classes: dict, guider: Any, sampler: Any, sigmas: torch.Tensor, latent: dict,
                   edit_guider: Any = None) -> tuple[float, Any, dict]:
    """Invert ``latent`` with the pack's Invert node, edit it back with Edit (``edit_guider``, or the same guider):
    (relative error of the reconstruction, the INVERSION, the z_T LATENT)."""
    with torch.inference_mode():
        inv, z_top = node_classes["ExactInversion_Invert"].execute(guider=guider, sampler=sampler, sigmas=sigmas,
                                                                  latent=latent).result
        rec = node_classes["ExactInversion_Edit"].execute(guider=edit_guider or guider, inversion=inv).result[0]
    return relative(rec["samples"], latent["samples"]), inv, z_top
