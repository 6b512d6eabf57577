"""Pure-torch inversion solvers (no ComfyUI import). See base.py for the interface."""

from .aidi import AIDI
from .base import Denoiser, Latents, Solver, StepCallback, StepHook
from .bdia import BDIA, bdia_guard
from .ddim import DDIM
from .edict import EDICT
from .ees import EES25, EES27
from .schedule import Schedule, check_sigmas, lambda_uniform_sigmas
from .state import InversionState

SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (DDIM, EDICT, BDIA, AIDI, EES25, EES27)}

__all__ = [
    "AIDI",
    "BDIA",
    "DDIM",
    "EDICT",
    "EES25",
    "EES27",
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
