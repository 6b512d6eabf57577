"""Save Inversion / Load Inversion: an INVERSION as a .safetensors file, safely.

Files are written only under ``<output>/inversions`` and read only from the output and input
folders (ComfyUI's own SaveLatent writes to output but LoadLatent reads from input; users complain,
so we list both). Names are checked before any path is built, and the resolved real path must stay
inside its folder (symlinks included). Files are safetensors (no pickle): tensors plus one JSON
metadata entry with a format version and a digest of every tensor, so an edited file is refused.

The folders may hold anything (other users, other tools, hostile workflows): a save never replaces a
file and appears complete or not at all; the listing skips, and logs, what it cannot offer; every
failure to read, write or validate a file ends in a ValueError naming the node, the input and the fix.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import stat
import uuid
from collections.abc import Iterator
from typing import Any

import folder_paths
import safetensors
import safetensors.torch
import torch
from comfy_api.latest import io

from ..solvers import InversionState
from ..solvers.state import StateFormatError, check_state, from_flat, to_flat
from .common import CATEGORY, PACK_VERSION, Inversion, latent_samples, node_id, solver_for_state

SAVE = "Save Inversion"
LOAD = "Load Inversion"
SUBFOLDER = "inversions"
EXTENSION = ".safetensors"
NO_FILE = "(none)"
_SAFE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]*")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
#: A Save prefix's names leave room for '_<counter>_.safetensors' in the 255 bytes file systems allow, and its
#: folders stay few enough to create and walk; the listing descends at most _MAX_DEPTH folder levels.
_MAX_PART = 200
_MAX_FOLDERS = 16
_MAX_DEPTH = 32
#: Names a save tries past the highest counter in use (more are taken only when others save at once).
_MAX_TRIES = 1000


def creation_info() -> dict[str, str]:
    """Who made a file and when: shown on load, useful when a file travels between machines."""
    try:
        from comfyui_version import __version__ as comfyui_version
    except ImportError:
        comfyui_version = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return {"pack": PACK_VERSION, "comfyui": comfyui_version, "torch": torch.__version__,
            "time_utc": now.isoformat()}


def _shown(name: str, limit: int = 80) -> str:
    """repr() of a user-given name, cut short: a hostile name must not flood the message."""
    text = repr(name)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_name(name: str, node: str, input_name: str, what: str, strict: bool = True) -> list[str]:
    """Split a relative name into safe parts, or raise a message naming the input and the fix.

    ``strict`` (names we create) allows a plain character set; names of existing files only have
    to be relative, without '..' or control characters.
    """
    parts = name.replace("\\", "/").split("/")
    bad = (not name.strip() or name.startswith(("/", "\\")) or ":" in name
           or any(p in ("", ".", "..") or not p.isprintable() or (strict and not _SAFE_PART.fullmatch(p))
                  for p in parts))
    if bad:
        rule = ("use letters, digits, spaces, '.', '-' and '_', with '/' between subfolders"
                if strict else "it must be a path inside the folder")
        raise ValueError(f"{node}: input '{input_name}' ({_shown(name)}) is not a valid {what}: {rule}; no '..', "
                         "no absolute paths")
    return parts


def _inside(base: str, parts: list[str], node: str, input_name: str) -> str:
    """Join ``parts`` under ``base`` and make sure the real path stays there (symlinks resolved)."""
    root = os.path.realpath(base)
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"{node}: input '{input_name}' points outside ComfyUI's {os.path.basename(root)} folder; "
                         "choose a file inside it")
    return path


class _Unusable(Exception):
    """A folder entry that cannot be offered or read as an inversion file; the message says why."""


def _regular_file(path: str) -> os.stat_result:
    """stat() of a regular file, or _Unusable: links that dangle or loop, folders, pipes, devices."""
    try:
        info = os.stat(path)
    except OSError as err:
        if os.path.islink(path):
            raise _Unusable(f"is a broken or looping link ({err.strerror})") from err
        raise _Unusable(f"cannot be read ({err.strerror})") from err
    if not stat.S_ISREG(info.st_mode):
        raise _Unusable("is not a regular file (a folder, pipe or device)")
    return info


# --- saving -----------------------------------------------------------------------------------------


def _prefix_parts(filename_prefix: Any) -> list[str]:
    """The checked parts of a Save prefix: safe names, short enough for any file system, few folders."""
    if not isinstance(filename_prefix, str):
        raise ValueError(f"{SAVE}: input 'filename_prefix' must be text, got {type(filename_prefix).__name__}")
    parts = filename_prefix.replace("\\", "/").split("/")
    if len(parts) - 1 > _MAX_FOLDERS or max(len(p) for p in parts) > _MAX_PART:
        raise ValueError(f"{SAVE}: input 'filename_prefix' ({_shown(filename_prefix)}, {len(filename_prefix)} "
                         f"characters) is too long: use at most {_MAX_FOLDERS} subfolders and at most {_MAX_PART} "
                         "characters per name")
    return _check_name(filename_prefix, SAVE, "filename_prefix", "file name prefix")


def _blocking_entry(root: str, parts: list[str]) -> str | None:
    """The first of ``parts`` (below ``root``) that exists but is not a folder, as a relative name."""
    path = root
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        if os.path.lexists(path) and not os.path.isdir(path):
            return "/".join(parts[:i + 1])
    return None


def _save_folder(parts: list[str], filename_prefix: str) -> str:
    """Create (if needed) and return the folder a prefix saves into, inside output/inversions."""
    output = folder_paths.get_output_directory()
    folders = [SUBFOLDER, *parts[:-1]]
    folder = _inside(output, folders, SAVE, "filename_prefix")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        blocker = _blocking_entry(output, folders)
        why = (f"'{blocker}' in ComfyUI's output folder is a file, not a folder; choose another prefix, or move "
               "that file away" if blocker else f"its folder cannot be created ({err.strerror}); choose another "
               "prefix, or check the output folder's permissions and free space")
        raise ValueError(f"{SAVE}: input 'filename_prefix' ({_shown(filename_prefix)}): {why}") from err
    _inside(output, folders, SAVE, "filename_prefix")  # a link swapped in meanwhile must not lead out
    return folder


def _next_number(folder: str, stem: str) -> int:
    """One past the highest counter of ``<stem>_<digits>_.safetensors`` in ``folder``, any number of digits."""
    pattern = re.compile(re.escape(stem) + r"_([0-9]+)_" + re.escape(EXTENSION))
    taken = [int(m.group(1)) for f in os.listdir(folder) if (m := pattern.fullmatch(f))]
    return max(taken, default=0) + 1


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _write_aside(folder: str, data: bytes) -> str:
    """Write ``data`` to a new hidden file in ``folder`` (mode 0666 less the umask, like any new file)."""
    path = os.path.join(folder, f".{uuid.uuid4().hex}.partial")
    try:
        with open(path, "xb") as f:
            f.write(data)
    except BaseException:
        _remove(path)
        raise
    return path


def _publish(written: str, path: str) -> bool:
    """Give the written file the name ``path`` unless that name is taken (False): never replaces a file."""
    try:
        os.link(written, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here (FAT, some network shares): reserve the name, then move into it
        pass
    try:
        with open(path, "xb"):
            pass
    except FileExistsError:
        return False
    try:
        os.replace(written, path)
    except BaseException:
        _remove(path)
        raise
    return True


def _write_new(folder: str, stem: str, data: bytes) -> str:
    """Store ``data`` as the next free ``<stem>_<counter>_.safetensors`` in ``folder``; returns the file name.

    The file appears complete or not at all (written aside, then linked in), and an existing name is
    never reused, whatever its number of digits: the counter moves on instead.
    """
    written = _write_aside(folder, data)
    try:
        number = _next_number(folder, stem)
        for attempt in range(_MAX_TRIES):
            filename = f"{stem}_{number + attempt:05d}_{EXTENSION}"
            if _publish(written, os.path.join(folder, filename)):
                return filename
    finally:
        _remove(written)
    raise FileExistsError(f"{_MAX_TRIES} file names after {stem}_{number:05d}_{EXTENSION} are taken")


def _file_bytes(inversion: Any) -> bytes:
    """The .safetensors bytes of an inversion, refused (naming the input) if a load would refuse them."""
    if not isinstance(inversion, InversionState):
        raise ValueError(f"{SAVE}: input 'inversion' must come from Invert or Load Inversion")
    try:
        check_state(inversion)
        tensors, metadata = to_flat(inversion)
    except StateFormatError as err:
        raise ValueError(f"{SAVE}: input 'inversion' cannot be saved: {err}; connect an inversion made by Invert "
                         "or Load Inversion, or invert again") from err
    return safetensors.torch.save(tensors, metadata=metadata)


def save_file(inversion: Any, filename_prefix: Any) -> str:
    """Write an inversion under output/inversions; returns its name as Load Inversion lists it."""
    data = _file_bytes(inversion)  # first: a refused inversion creates no folder
    parts = _prefix_parts(filename_prefix)
    folder = _save_folder(parts, filename_prefix)
    try:
        filename = _write_new(folder, parts[-1], data)
    except OSError as err:
        raise ValueError(f"{SAVE}: input 'filename_prefix' ({_shown(filename_prefix)}): cannot write the file in "
                         f"ComfyUI's output folder ({err.strerror or err}); choose a shorter or other prefix, or "
                         "free disk space and check the folder's permissions") from err
    return "/".join([SUBFOLDER, *parts[:-1], filename]) + " [output]"


# --- listing and loading ----------------------------------------------------------------------------

_WARNED: set[tuple[str, str, str]] = set()


def _skip(tag: str, name: str, why: str) -> None:
    """Log (once per entry and reason: the listing runs on every /object_info) why an entry is left out."""
    if (tag, name, why) in _WARNED:
        return
    if len(_WARNED) > 10_000:
        _WARNED.clear()
    _WARNED.add((tag, name, why))
    logging.warning("%s: not listing %r from ComfyUI's %s folder: it %s", LOAD, name, tag, why)


def _candidates(root: str, tag: str, prefix: str) -> Iterator[tuple[str, str]]:
    """(path, listed name) of every ``*.safetensors`` below ``root``, walked without recursion or links.

    Hidden folders and folders behind links are not entered; unreadable or too deep ones are logged.
    """
    stack = [(root, prefix, 0)]
    while stack:
        folder, rel, depth = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            _skip(tag, rel or ".", f"is a folder that cannot be read ({err.strerror})")
            continue
        for entry in entries:
            name = rel + entry.name
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                if depth < _MAX_DEPTH:
                    stack.append((entry.path, name + "/", depth + 1))
                else:
                    _skip(tag, name, f"is a folder deeper than {_MAX_DEPTH} levels")
            elif entry.name.endswith(EXTENSION):
                yield entry.path, name


def _listed_time(path: str, name: str, base: str, tag: str) -> float | None:
    """Modification time of an entry Load Inversion can offer, or None (logged) for one it cannot."""
    try:
        _check_name(name, LOAD, "file", "file name", strict=False)
    except ValueError:
        _skip(tag, name, "has a name Load Inversion cannot take (control characters, ':' or the like)")
        return None
    try:
        _inside(base, [os.path.relpath(path, base)], LOAD, "file")
        return _regular_file(path).st_mtime
    except ValueError:
        _skip(tag, name, "is a link that leads outside the folder")
    except _Unusable as err:
        _skip(tag, name, str(err))
    return None


def list_files() -> list[str]:
    """Inversion files Load Inversion offers: output/inversions and the input folder, newest first.

    Called at schema time (``/object_info``), so it never raises: entries it cannot offer are logged.
    """
    found: list[tuple[float, str]] = []
    output, inputs = folder_paths.get_output_directory(), folder_paths.get_input_directory()
    roots = [(output, os.path.join(output, SUBFOLDER), SUBFOLDER + "/", "output"), (inputs, inputs, "", "input")]
    for base, root, prefix, tag in roots:
        if not os.path.isdir(root):
            continue
        for path, name in _candidates(root, tag, prefix):
            mtime = _listed_time(path, name, base, tag)
            if mtime is not None:
                found.append((mtime, f"{name} [{tag}]"))
    return [name for _, name in sorted(found, key=lambda item: (-item[0], item[1]))]


def resolve(name: Any, node: str = LOAD, input_name: str = "file") -> str:
    """Absolute path of a Load Inversion name (``<relative> [output]`` or ``<relative> [input]``)."""
    if not isinstance(name, str):
        raise ValueError(f"{node}: input '{input_name}' must be a file name (text), got {type(name).__name__}")
    match = re.fullmatch(r"(.+) \[(output|input)\]\s*", name, flags=re.DOTALL)
    if match is None:
        raise ValueError(f"{node}: input '{input_name}' ({_shown(name)}) must name a file as listed, e.g. "
                         f"'inversions/inversion_00001_{EXTENSION} [output]' or 'my_file{EXTENSION} [input]'")
    relative, tag = match.groups()
    if not relative.endswith(EXTENSION):
        raise ValueError(f"{node}: input '{input_name}' ({_shown(name)}) is not a {EXTENSION} file; choose a "
                         f"{EXTENSION} file saved by Save Inversion")
    base = folder_paths.get_output_directory() if tag == "output" else folder_paths.get_input_directory()
    parts = _check_name(relative, node, input_name, "file name", strict=False)
    path = _inside(base, parts, node, input_name)
    unresolved = os.path.join(base, *parts)
    if not os.path.lexists(unresolved):
        raise ValueError(f"{node}: input '{input_name}': no file {_shown(relative)} in ComfyUI's {tag} folder; save "
                         "one with Save Inversion, or refresh the node (press R) to update the list")
    try:
        _regular_file(unresolved)
    except _Unusable as err:
        raise ValueError(f"{node}: input '{input_name}' ({_shown(relative)}) {err}; choose a file written by Save "
                         "Inversion (fix or delete a broken link), and refresh the node (press R)") from err
    return path


def _read_flat(path: str, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str] | None]:
    """The tensors and metadata of a safetensors file; any file that cannot be decoded is refused."""
    refuse = f"{where} is not a safetensors file; choose a file written by Save Inversion"
    try:
        size = _regular_file(path).st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except (OSError, _Unusable) as err:
        reason = err.strerror if isinstance(err, OSError) else str(err)  # no server paths in the message
        raise ValueError(f"{where} cannot be read ({reason}); choose a file written by Save Inversion") from err
    header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
    if not 2 <= header_len <= min(_MAX_HEADER, size - 8):
        raise ValueError(refuse)
    try:
        with safetensors.safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # untrusted bytes: whatever the decoder raises means the file is not usable
        reason = _shown(str(err), 200)
        raise ValueError(f"{where} is not a readable safetensors file ({reason}); choose a file written by Save "
                         "Inversion") from err
    return tensors, metadata


def read_state(path: str, node: str = LOAD, input_name: str = "file") -> InversionState:
    """Read and verify a file written by Save Inversion; anything else gets a clear refusal."""
    where = f"{node}: input '{input_name}' ({os.path.basename(path)})"
    tensors, metadata = _read_flat(path, where)
    try:
        return from_flat(tensors, metadata)
    except StateFormatError as err:
        raise ValueError(f"{where} cannot be loaded: {err}; choose a file written by Save Inversion, or invert and "
                         "save again") from err


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
        name = save_file(inversion, filename_prefix)
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
        if not isinstance(chosen, str):
            raise ValueError(f"{LOAD}: input '{input_name}' must be a file name (text), got {type(chosen).__name__}")
        if chosen == NO_FILE:
            raise ValueError(f"{LOAD}: input '{input_name}': no file chosen; save one with Save Inversion, or put a "
                             f"{EXTENSION} inversion in the input folder and refresh (press R)")
        state = read_state(resolve(chosen, LOAD, input_name), LOAD, input_name)
        try:
            solver_for_state(state, LOAD, input_name)
        except ValueError as err:
            raise ValueError(f"{err}; choose a file written by Save Inversion, or invert and save again") from err
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
    return problems


NODES = [SaveInversion, LoadInversion]
