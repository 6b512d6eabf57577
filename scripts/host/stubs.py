"""Import-only stand-ins for torchvision and torchaudio in a CPU-only ComfyUI test host.

No torchvision or torchaudio build on PyPI matches the held torch 2.13.0 CPU wheel, yet ComfyUI imports
them at module level (``comfy/sd.py`` imports torchaudio in 0.28). Every module below imports; any real
use of what it holds raises ``NotImplementedError`` naming the missing attribute. The pack never uses them.
"""

from __future__ import annotations

from pathlib import Path

#: every module ComfyUI 0.3.75 and 0.28.2 import from the two packages (parents are implied)
MODULES = [
    "torchvision.transforms.functional",
    "torchvision.ops",
    "torchvision.models.optical_flow",
    "torchvision.io",
    "torchaudio.functional",
    "torchaudio.transforms",
]

STANDIN = '''"""Shared by the torchvision/torchaudio stand-ins (see scripts/host/stubs.py in the pack)."""


class Missing:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"stand-in: {self._name} is not available in this test host")

    def __repr__(self):
        return f"<stand-in {self._name}>"


def module_getattr(module):
    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Missing(f"{module}.{name}")
    return __getattr__
'''

MODULE = '''"""Import-only stand-in for {name} (any real use raises)."""
from _exact_inversion_standin import module_getattr

__version__ = "0.0.0+standin"
__getattr__ = module_getattr("{name}")
{children}'''


def _all_modules() -> list[str]:
    names = set()
    for dotted in MODULES:
        parts = dotted.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return sorted(names)


def write(root: Path) -> None:
    """Write the stand-in packages under ``root`` (a folder put on PYTHONPATH)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "_exact_inversion_standin.py").write_text(STANDIN)
    names = _all_modules()
    for name in names:
        children = [n.rsplit(".", 1)[1] for n in names if n.rsplit(".", 1)[0] == name and "." in n]
        imports = "".join(f"from . import {child}  # noqa: E402,F401\n" for child in children)
        folder = root.joinpath(*name.split("."))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text(MODULE.format(name=name, children=imports))
