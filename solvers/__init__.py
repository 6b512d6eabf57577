"""Pure-torch inversion solvers (no ComfyUI import). See base.py for the interface."""

from .base import Denoiser, Solver, StepCallback
from .ddim import DDIM
from .schedule import Schedule, check_sigmas, lambda_uniform_sigmas
from .state import InversionState

SOLVERS: dict[str, type[Solver]] = {DDIM.name: DDIM}

__all__ = [
    "DDIM",
    "SOLVERS",
    "Denoiser",
    "InversionState",
    "Schedule",
    "Solver",
    "StepCallback",
    "check_sigmas",
    "lambda_uniform_sigmas",
]
