"""The pack loads through ComfyUI's own custom-node loader, with every node registered."""

from testbed import comfyhost

EXPECTED = {"ExactInversion_DDIMSolver", "ExactInversion_Invert", "ExactInversion_Edit",
            "ExactInversion_RoundTripCheck",
            "ExactInversion_EDICTSolver", "ExactInversion_BDIASolver", "ExactInversion_AIDISolver",
            "ExactInversion_EESSolver", "ExactInversion_SaveInversion", "ExactInversion_LoadInversion",
            "ExactInversion_ToyModelLoader", "ExactInversion_AttentionMask", "ExactInversion_BlendedGuidance",
            "ExactInversion_NullTextInversion"}


def test_loads_without_import_failure(host):
    assert host["import_failures"] == []


def test_every_node_registered_with_tooltips(host, node_classes):
    ours = {k for k in node_classes if k.startswith("ExactInversion_")}
    assert EXPECTED <= ours
    for name in ours:
        cls = node_classes[name]
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for inp, sp in spec.get(section, {}).items():
                opts = sp[1] if len(sp) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
        assert cls.CATEGORY == "sampling/exact inversion"


def test_web_directory_registered(host):
    import nodes

    assert any(path.rstrip("/").endswith("js") for path in nodes.EXTENSION_WEB_DIRS.values())


def test_solvers_never_import_comfy():
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    code = ("import sys, solvers; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'nodes')]; "
            "print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], cwd=repo, check=True, env={"PYTHONPATH": str(repo)})


def test_pack_version_matches_pyproject(host):
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    common = comfyhost.pack_module("nodes.common")
    assert common.PACK_VERSION == pyproject["project"]["version"]
