"""Boot a real ComfyUI in-process (library mode) and run graphs through its executor.

Used by tests/host and the demo. ComfyUI comes from the cache provisioned by scripts/setup_host.sh;
its location is in COMFYUI_DIR (set by scripts/py).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTBED = Path(__file__).resolve().parent


class HostMissing(RuntimeError):
    pass


def comfy_dir() -> Path:
    d = os.environ.get("COMFYUI_DIR")
    if not d or not (Path(d) / "execution.py").is_file():
        raise HostMissing("ComfyUI host not found: run through scripts/py (it provisions the host)")
    return Path(d)


_BOOTED: dict[str, Any] = {}


def boot(work: str | None = None) -> dict[str, Any]:
    """Import ComfyUI on the CPU, point its folders at a temp dir, load our pack and the test pack.

    Writes the example image the workflows load into the input folder.

    Idempotent within a process. Returns {"work": dir, "nodes": module, "import_failures": [...]}.
    """
    if _BOOTED:
        return _BOOTED
    cdir = comfy_dir()
    for p in (str(cdir), str(REPO)):
        if p not in sys.path:
            sys.path.insert(0, p)
    from comfy.cli_args import args

    args.cpu = True
    import folder_paths
    import utils.extra_config  # noqa: F401  (before nodes.py shadows 'utils')

    work = work or tempfile.mkdtemp(prefix="exact-inversion-host-")
    for d in ("output", "input", "temp", "user", "models/checkpoints"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    folder_paths.set_output_directory(f"{work}/output")
    folder_paths.set_input_directory(f"{work}/input")
    folder_paths.set_temp_directory(f"{work}/temp")
    folder_paths.set_user_directory(f"{work}/user")
    folder_paths.add_model_folder_path("checkpoints", f"{work}/models/checkpoints", is_default=True)
    from testbed.images import example_image

    example_image().save(os.path.join(work, "input", "example.png"))  # what the workflows' LoadImage reads
    shutil.copy(REPO / "workflows" / "toy_example.png", os.path.join(work, "input", "toy_example.png"))

    import torch

    import nodes

    torch.set_num_threads(1)
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    failures = []
    for pack in (REPO, TESTBED / "tinypack"):
        if not asyncio.run(nodes.load_custom_node(str(pack))):
            failures.append(str(pack))
    _BOOTED.update(work=work, nodes=nodes, import_failures=failures)
    return _BOOTED


def pack_module(name: str) -> Any:
    """A module of the pack as ComfyUI loaded it, e.g. ``pack_module("nodes.storage")``.

    ComfyUI imports a custom-node pack under a name of its own (the pack's path), so the pack's modules are
    not the ``solvers`` / ``nodes`` a test would import from the repo root (classes would differ and
    ``isinstance`` fail). The pack's package is the module whose file is the repo's ``__init__.py``.
    """
    boot()
    init = REPO / "__init__.py"
    root = next(n for n, m in list(sys.modules.items())
                if getattr(m, "__file__", None) and Path(m.__file__).resolve() == init)
    return importlib.import_module(f"{root}.{name}")


class NullServer:
    """What execution.PromptExecutor needs from PromptServer; records the messages it sends."""

    def __init__(self) -> None:
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        self.messages.append((event, data))


#: PromptExecutor's cache settings as main.py passes them with caching off: 0.28 reads "ram_inactive" too, 0.3.75
#: ignores keys it does not know, so one dict serves every host
CACHE_ARGS = {"lru": 0, "ram": 0, "ram_inactive": 0}


def run_prompt(prompt: dict[str, Any]) -> dict[str, Any]:
    """Validate and execute an API-format graph; returns the history outputs or raises with the error."""
    import execution

    boot()
    pid = str(uuid.uuid4())
    valid = asyncio.run(execution.validate_prompt(pid, prompt, None))
    ok, err, outputs, node_errors = valid
    if not ok:
        raise RuntimeError(f"prompt failed validation: {err} {node_errors}")
    server = NullServer()
    ex = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args=CACHE_ARGS)
    ex.execute(prompt, pid, {}, outputs)
    if not ex.success:
        errors = [m for m in ex.status_messages if m[0] == "execution_error"]
        raise RuntimeError(f"prompt failed: {errors}")
    return ex.history_result["outputs"]
