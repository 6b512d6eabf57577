#!/usr/bin/env bash
# Provision comfy-cli 1.23.0 (the Comfy Registry's own `comfy node validate`) from PyPI, in its own
# Python 3.11 venv: it needs no torch and must not touch the ComfyUI host venv (scripts/setup_host.sh).
# Idempotent: with a good venv it only re-runs the smoke test (about a second). Fresh install: 15-25 s.
#
# Usage: scripts/setup_comfy_cli.sh [DIR]   (default: $EXACT_INVERSION_COMFY_CLI or ~/.cache/exact-inversion/comfy-cli-1.23.0)
set -euo pipefail

RECIPE=2   # bump when anything below changes, so existing venvs are rebuilt
DIR=${1:-${EXACT_INVERSION_COMFY_CLI:-$HOME/.cache/exact-inversion/comfy-cli-1.23.0}}
PY=${PYTHON:-python3.11}
export DO_NOT_TRACK=1 COMFY_NO_TELEMETRY=1   # comfy-cli 1.23.0's telemetry opt-outs (it ignores COMFY_CLI_TRACKING)

smoke_test() {
  [ "$("$DIR/bin/comfy" --skip-prompt --no-enable-telemetry --no-json --version)" = "1.23.0" ] \
    && "$DIR/bin/python" -m ruff --version >/dev/null \
    && ! "$DIR/bin/python" -c "import torch" 2>/dev/null
}

if [ -f "$DIR/.recipe" ] && [ "$(cat "$DIR/.recipe")" = "$RECIPE" ] && smoke_test; then
  echo "comfy-cli ready at $DIR"
  exit 0
fi

echo "provisioning comfy-cli 1.23.0 in $DIR (15-25 s with a warm pip cache)"
start=$(date +%s)
[ ! -e "$DIR" ] || [ -f "$DIR/pyvenv.cfg" ] || { echo "refusing to replace $DIR: not a venv" >&2; exit 1; }
rm -rf "$DIR"
"$PY" -m venv "$DIR"
echo "torch<0" > "$DIR/constraints.txt"   # unsatisfiable: any dependency that pulls torch fails the install loudly
PIP_CONSTRAINT="$DIR/constraints.txt" "$DIR/bin/python" -m pip install -q --disable-pip-version-check comfy-cli==1.23.0 \
  ruff==0.17.6   # the linter comfy node validate runs; pinned so its verdict is repeatable
smoke_test
echo "$RECIPE" > "$DIR/.recipe"
echo "comfy-cli ready at $DIR (installed in $(( $(date +%s) - start )) s)"
