"""scripts/host.py: which ComfyUI a host is built from, and at which pins (no network, no venv here)."""

from __future__ import annotations

import importlib.util
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("host_script", REPO / "scripts" / "host.py")
host = importlib.util.module_from_spec(spec)
sys.modules["host_script"] = host  # its dataclasses look their module up while the file runs
spec.loader.exec_module(host)


def comfy_tree(root: Path, version: str, requirements: str) -> Path:
    root.mkdir(parents=True)
    (root / "main.py").write_text("")
    (root / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    (root / "requirements.txt").write_text(requirements)
    return root


def test_the_source_is_pypi_a_folder_or_an_archive_with_its_version(tmp_path, monkeypatch):
    monkeypatch.delenv("EXACT_INVERSION_COMFYUI", raising=False)
    assert host.find_source().kind == "pypi" and host.find_source().version == "0.3.75"
    tree = comfy_tree(tmp_path / "ComfyUI", "9.9.9", "torch\n")
    monkeypatch.setenv("EXACT_INVERSION_COMFYUI", str(tree))
    folder = host.find_source()
    assert (folder.kind, folder.version) == ("folder", "9.9.9")
    (tree / "nodes.py").write_text("# changed")
    assert host.find_source().fingerprint != folder.fingerprint  # an edited checkout rebuilds its host
    archive = tmp_path / "comfy.tar.xz"
    with tarfile.open(archive, "w:xz") as tf:
        tf.add(tree, arcname="9.9.9")
    monkeypatch.setenv("EXACT_INVERSION_COMFYUI", str(archive))
    packed = host.find_source()
    assert (packed.kind, packed.version) == ("archive", "9.9.9") and len(packed.fingerprint) == 64
    monkeypatch.setenv("EXACT_INVERSION_HOST", "")
    assert host.host_dir(packed).name == "host-9.9.9"


@pytest.mark.parametrize("given", ["/no/such/folder", "__file__"])
def test_a_source_that_is_not_comfyui_fails_loudly(given, monkeypatch, capsys):
    monkeypatch.setenv("EXACT_INVERSION_COMFYUI", __file__ if given == "__file__" else given)
    with pytest.raises(SystemExit):
        host.find_source()
    assert "host: error: EXACT_INVERSION_COMFYUI=" in capsys.readouterr().err


def test_the_trees_own_pins_win_and_the_lock_pins_the_rest(tmp_path):
    tree = comfy_tree(tmp_path / "t", "0.28.2", "comfyui-frontend-package==1.45.21\nnumpy>=1.25.0\ntorch\n"
                                                 "# a comment\n\nPyYAML  # inline\n")
    requirements = host.tree_requirements(tree)
    assert [name for name, _ in requirements] == ["comfyui-frontend-package", "numpy", "torch", "pyyaml"]
    lock, exact = host.choose_lock("0.28.2")
    assert exact and lock.name == "0.28.2.txt"
    out = tmp_path / "h"
    out.mkdir()
    host.write_constraints(out, requirements, lock)
    constraints = (out / "constraints.txt").read_text().splitlines()
    assert constraints[0] == "torch==2.13.0"
    assert not any(line.lower().startswith("comfyui_frontend_package") for line in constraints)  # the tree's pin
    assert any(line.startswith("numpy==") for line in constraints)


def test_a_version_without_a_lock_takes_the_newest_lock():
    lock, exact = host.choose_lock("99.0.0")
    assert not exact and lock.name == "0.28.2.txt"  # 0.28.2 > 0.3.75: versions compare as numbers


def test_a_checkouts_user_data_is_left_out_only_at_its_top(tmp_path):
    """models/, output/, custom_nodes/ ... of a checkout are the user's; comfy/ldm/models is ComfyUI's code."""
    tree = comfy_tree(tmp_path / "ComfyUI", "1.0.0", "")
    for rel in ("comfy/ldm/models/autoencoder.py", "models/checkpoints/big.safetensors", "custom_nodes/x/a.py",
                "comfy/__pycache__/a.pyc", ".git/HEAD"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("x")
    listed = {p.relative_to(tree).as_posix() for p in host._tree_files(tree)}
    assert "comfy/ldm/models/autoencoder.py" in listed
    assert not {p for p in listed if p.startswith(("models/", "custom_nodes/", ".git/")) or "__pycache__" in p}
    dest = tmp_path / "copy"
    host._copy_folder(tree, dest)
    assert (dest / "comfy/ldm/models/autoencoder.py").is_file() and not (dest / "models").exists()
