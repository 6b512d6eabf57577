"""Pure-torch inversion solvers (no ComfyUI import). See base.py for the interface."""

from .aidi import AIDI
from .base import Denoiser, Latents, Solver, StepCallback, StepHook
from .bdia import BDIA, bdia_guard
from .belm import BELM
from .ddim import DDIM
from .edict import EDICT
from .ees import EES25, EES27
from .midpoint import FireFlow, RFSolver
from .rex import Rex
from .schedule import Schedule, check_sigmas, lambda_uniform_sigmas
from .state import InversionState

SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls for cls in (DDIM, EDICT, BDIA, AIDI, EES25, EES27, BELM, Rex, RFSolver, FireFlow)
}

__all__ = [
    "AIDI",
    "BDIA",
    "BELM",
    "DDIM",
    "EDICT",
    "EES25",
    "EES27",
    "FireFlow",
    "RFSolver",
    "Rex",
    "SOLVERS",
    "Denoiser",
    "InversionState",
    "Latents",
    "Schedule",
    "Solver",
    "StepCallback",
    "StepHook",
    "bdia_guard",
    "check_sigmas",
    "lambda_uniform_sigmas",
]
