"""Save Inversion / Load Inversion: an INVERSION as a .safetensors file, safely.

Files are written only under ``<output>/inversions`` and read only from the output and input
folders (ComfyUI's own SaveLatent writes to output but LoadLatent reads from input; users complain,
so we list both). Names are checked before any path is built, and the resolved real path must stay
inside its folder (symlinks included). Files are safetensors (no pickle): tensors plus one JSON
metadata entry with a format version and a digest of every tensor, so an edited file is refused.
"""

from __future__ import annotations

import datetime
import os
import re
from typing import Any

import folder_paths
import safetensors
import safetensors.torch
import torch
from comfy_api.latest import io

from ..solvers import InversionState, Schedule, check_sigmas
from ..solvers.state import StateFormatError, from_flat, to_flat
from .common import CATEGORY, PACK_VERSION, Inversion, latent_samples, node_id, solver_for_state

SAVE = "Save Inversion"
LOAD = "Load Inversion"
SUBFOLDER = "inversions"
EXTENSION = ".safetensors"
NO_FILE = "(none)"
_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def creation_info() -> dict[str, str]:
    """Who made a file and when: shown on load, useful when a file travels between machines."""
    try:
        from comfyui_version import __version__ as comfyui_version
    except ImportError:
        comfyui_version = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"pack": PACK_VERSION, "comfyui": comfyui_version, "torch": torch.__version__,
            "time_utc": now.isoformat()}


def _check_name(name: str, node: str, input_name: str, what: str, strict: bool = True) -> list[str]:
    """Split a relative name into safe parts, or raise a message naming the input and the fix.

    ``strict`` (names we create) allows a plain character set; names of existing files only have
    to be relative, without '..' or control characters.
    """
    parts = name.replace("\\", "/").split("/")
    bad = (not name.strip() or name.startswith(("/", "\\")) or ":" in name
           or any(p in ("", ".", "..") or not p.isprintable() or (strict and not _SAFE_PART.match(p))
                  for p in parts))
    if bad:
        rule = ("use letters, digits, spaces, '.', '-' and '_', with '/' between subfolders"
                if strict else "it must be a path inside the folder")
        raise ValueError(f"{node}: input '{input_name}' ({name!r}) is not a valid {what}: {rule}; no '..', no "
                         "absolute paths")
    return parts


def _inside(base: str, parts: list[str], node: str, input_name: str) -> str:
    """Join ``parts`` under ``base`` and make sure the real path stays there (symlinks resolved)."""
    root = os.path.realpath(base)
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"{node}: input '{input_name}' points outside ComfyUI's {os.path.basename(root)} folder; "
                         "choose a file inside it")
    return path


def save_path(filename_prefix: str) -> tuple[str, str]:
    """(absolute path, name for Load Inversion) of the next free ``<prefix>_NNNNN_.safetensors``."""
    parts = _check_name(filename_prefix, SAVE, "filename_prefix", "file name prefix")
    folder = _inside(folder_paths.get_output_directory(), [SUBFOLDER, *parts[:-1]], SAVE, "filename_prefix")
    os.makedirs(folder, exist_ok=True)
    pattern = re.compile(re.escape(parts[-1]) + r"_(\d{5})_" + re.escape(EXTENSION) + "$")
    taken = [int(m.group(1)) for f in os.listdir(folder) if (m := pattern.match(f))]
    filename = f"{parts[-1]}_{max(taken, default=0) + 1:05d}_{EXTENSION}"
    relative = "/".join([SUBFOLDER, *parts[:-1], filename])
    return os.path.join(folder, filename), f"{relative} [output]"


def list_files() -> list[str]:
    """Inversion files Load Inversion offers: output/inversions and the input folder, newest first."""
    found: list[tuple[float, str]] = []
    roots = [(os.path.join(folder_paths.get_output_directory(), SUBFOLDER), SUBFOLDER + "/", "output"),
             (folder_paths.get_input_directory(), "", "input")]
    for root, prefix, tag in roots:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
            for f in filenames:
                if f.endswith(EXTENSION):
                    rel = f if rel_dir == "." else f"{rel_dir}/{f}"
                    found.append((os.path.getmtime(os.path.join(dirpath, f)), f"{prefix}{rel} [{tag}]"))
    return [name for _, name in sorted(found, key=lambda item: (-item[0], item[1]))]


def resolve(name: str, node: str = LOAD, input_name: str = "file") -> str:
    """Absolute path of a Load Inversion name (``<relative> [output]`` or ``<relative> [input]``)."""
    match = re.fullmatch(r"(.+) \[(output|input)\]", name.strip())
    if match is None:
        raise ValueError(f"{node}: input '{input_name}' ({name!r}) must name a file as listed, e.g. "
                         f"'inversions/inversion_00001_{EXTENSION} [output]' or 'my_file{EXTENSION} [input]'")
    relative, tag = match.groups()
    if not relative.endswith(EXTENSION):
        raise ValueError(f"{node}: input '{input_name}' ({name!r}) is not a {EXTENSION} file; inversions are saved "
                         f"by Save Inversion as {EXTENSION}")
    base = folder_paths.get_output_directory() if tag == "output" else folder_paths.get_input_directory()
    path = _inside(base, _check_name(relative, node, input_name, "file name", strict=False), node, input_name)
    if not os.path.isfile(path):
        raise ValueError(f"{node}: input '{input_name}': no file {relative!r} in ComfyUI's {tag} folder; save one "
                         "with Save Inversion, or refresh the node (press R) to update the list")
    return path


def write_state(state: InversionState, path: str) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a half-written inversion."""
    tensors, metadata = to_flat(state)
    tmp = path + ".partial"
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_state(path: str, node: str = LOAD, input_name: str = "file") -> InversionState:
    """Read and verify a file written by ``write_state``; anything else gets a clear refusal."""
    shown = os.path.basename(path)
    with open(path, "rb") as f:
        head = f.read(8)
    header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 2 <= header_len <= min(_MAX_HEADER, os.path.getsize(path) - 8):
        raise ValueError(f"{node}: input '{input_name}' ({shown}) is not a safetensors file; choose a file written "
                         "by Save Inversion")
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{node}: input '{input_name}' ({shown}) is not a readable safetensors file ({err}); "
                         "choose a file written by Save Inversion") from err
    try:
        return from_flat(tensors, metadata)
    except StateFormatError as err:
        raise ValueError(f"{node}: input '{input_name}' ({shown}) cannot be loaded: {err}") from err


class SaveInversion(io.ComfyNode):
    """Writes an INVERSION to <output>/inversions so it can be edited later, in another session."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("SaveInversion"),
            display_name=SAVE,
            category=CATEGORY,
            description="Saves an inversion (latents, sigma grid, solver, model and prompt fingerprints) as a "
                        f".safetensors file in ComfyUI's output folder under '{SUBFOLDER}/'. Load it with Load "
                        "Inversion to edit without inverting again.",
            is_output_node=True,
            inputs=[
                Inversion.Input("inversion", tooltip="The output of Invert."),
                io.String.Input("filename_prefix", default="inversion",
                                tooltip=f"File name prefix; subfolders with '/'. Saved as "
                                        f"output/{SUBFOLDER}/<prefix>_00001_{EXTENSION}, never overwriting."),
            ],
            outputs=[io.String.Output("file", display_name="file",
                                      tooltip="The saved file's name as Load Inversion lists it; connect it "
                                              "to Load Inversion's file_name to reload in the same run.")],
        )

    @classmethod
    def execute(cls, inversion: Any, filename_prefix: str) -> io.NodeOutput:
        if not isinstance(inversion, InversionState):
            raise ValueError(f"{SAVE}: input 'inversion' must come from Invert or Load Inversion")
        path, name = save_path(filename_prefix)
        write_state(inversion, path)
        text = f"saved {name}: {inversion.describe()}"
        return io.NodeOutput(name, ui={"text": [text]})


class LoadInversion(io.ComfyNode):
    """Reads an INVERSION saved by Save Inversion, refusing files that do not fit the graph."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=node_id("LoadInversion"),
            display_name=LOAD,
            category=CATEGORY,
            description=f"Loads an inversion saved by Save Inversion, from the output folder ('{SUBFOLDER}/') or "
                        "the input folder. Edit refuses it with another model, and the optional inputs refuse a "
                        "different latent shape or sigma grid, unless allow_mismatch is ticked.",
            inputs=[
                io.Combo.Input("file", options=[*list_files(), NO_FILE],
                               tooltip=f"A {EXTENSION} inversion from output/{SUBFOLDER} or from input."),
                io.Boolean.Input("allow_mismatch", default=False,
                                 tooltip="Use the file even if its model, latent shape or grid differ from the "
                                         "graph's. The round trip is then no longer exact."),
                io.String.Input("file_name", optional=True, force_input=True,
                                tooltip="Optional: Save Inversion's 'file' output; overrides 'file', so one run "
                                        "can save and reload in order."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional: the image latent this inversion should fit; a different shape "
                                        "is refused."),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="Optional: the grid the graph expects; a different grid is refused."),
            ],
            outputs=[
                Inversion.Output("inversion", display_name="INVERSION",
                                 tooltip="The loaded inversion; feed it to Edit."),
                io.Latent.Output("noise_latent", display_name="noise latent",
                                 tooltip="The inverted latent z_T, as Invert output it."),
            ],
        )

    @classmethod
    def execute(cls, file: str, allow_mismatch: bool, file_name: str | None = None, latent: dict | None = None,
                sigmas: torch.Tensor | None = None) -> io.NodeOutput:
        chosen, input_name = (file_name, "file_name") if file_name else (file, "file")
        if chosen == NO_FILE:
            raise ValueError(f"{LOAD}: input 'file': no file chosen; save one with Save Inversion, or put a "
                             f"{EXTENSION} inversion in the input folder and refresh (press R)")
        state = read_state(resolve(chosen, LOAD, input_name), LOAD, input_name)
        solver_for_state(state, LOAD, input_name)
        problems = _mismatches(state, latent, sigmas)
        if problems and not allow_mismatch:
            raise ValueError(f"{LOAD}: {'; '.join(problems)}. Use the matching inputs, or tick allow_mismatch")
        state.meta = {**state.meta, "loaded_from": chosen, "allow_mismatch": bool(allow_mismatch)}
        lines = [f"loaded {chosen}: {state.describe()}", *[f"mismatch allowed: {p}" for p in problems]]
        z_top = state.extras.get("noise_latent", state.latents["x"]).to(torch.float32)
        return io.NodeOutput(state, {"samples": z_top}, ui={"text": lines})


def _mismatches(state: InversionState, latent: dict | None, sigmas: torch.Tensor | None) -> list[str]:
    problems = []
    if latent is not None:
        shape = list(latent_samples(latent, LOAD, "latent").shape)
        if shape != list(state.shape):
            problems.append(f"input 'latent' has shape {shape} but the file was inverted from {list(state.shape)}")
    if sigmas is not None:
        grid = sigmas.detach().to("cpu", torch.float64).flatten()
        if grid.shape != state.sigmas.shape or not torch.allclose(grid, state.sigmas, rtol=1e-6, atol=1e-9):
            problems.append(f"input 'sigmas' ({len(grid) - 1} steps) differs from the file's grid "
                            f"({state.steps} steps)")
    check_sigmas(state.sigmas, Schedule(state.schedule), what=f"{LOAD}: the file's sigma grid")
    return problems


NODES = [SaveInversion, LoadInversion]
