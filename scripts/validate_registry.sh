#!/usr/bin/env bash
# `make validate`: check that the pack is ready for the Comfy Registry with its own tool,
# `comfy node validate` from comfy-cli 1.23.0 (own venv: scripts/setup_comfy_cli.sh), run offline.
#
# comfy-cli 1.23.0 exits 0 on most problems: invalid classifiers or requires-comfyui only print
# "Warning: ... will not be populated", and exec/eval/`a; b` (ruff S102/S307/E702) only print
# "Security warnings found". So this script fails on any of those lines, or without the success line.
# It also checks the spec's required fields that 1.23.0 does not look at (docs.comfy.org/registry/specifications).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLI=${EXACT_INVERSION_COMFY_CLI:-$HOME/.cache/exact-inversion/comfy-cli-1.23.0}
"$REPO/scripts/setup_comfy_cli.sh" "$CLI"
cd "$REPO"

rc=0
out=$(DO_NOT_TRACK=1 COMFY_NO_TELEMETRY=1 COLUMNS=200 \
  "$CLI/bin/comfy" --skip-prompt --no-enable-telemetry --no-json node validate 2>&1) || rc=$?
echo "$out"
if [ "$rc" -ne 0 ] || grep -qE '^(Warning|Error)|Security warnings found' <<<"$out" \
   || ! grep -q 'All validation checks passed successfully' <<<"$out"; then
  echo "registry validation FAILED (comfy node validate exit $rc; see its warnings above)" >&2
  exit 1
fi

"$CLI/bin/python" - <<'PY'
import os, re, sys, tomllib
d = tomllib.load(open("pyproject.toml", "rb"))
p, c = d["project"], d["tool"]["comfy"]
errors = [msg for ok, msg in [
    (re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", p.get("name", "")) and len(p["name"]) < 100,
     "project.name: letters, digits, single - _ . separators, starting with a letter, < 100 chars"),
    ("comfyui" not in p.get("name", "").lower(), "project.name must not contain 'ComfyUI'"),
    (re.fullmatch(r"\d+\.\d+\.\d+", p.get("version", "")), "project.version must be X.Y.Z"),
    (p.get("urls", {}).get("Repository"), "project.urls.Repository is required"),
    (c.get("PublisherId"), "tool.comfy.PublisherId is required"),
    (os.path.isfile(p.get("license", {}).get("file", "LICENSE")), "license file is missing"),
    *[(os.path.isdir(i), f"tool.comfy.includes: no folder {i!r}") for i in c.get("includes", [])],
] if not ok]
for e in errors:
    print("ERROR:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
echo "registry validation passed: $(grep -m1 '^name' pyproject.toml) $(grep -m1 '^version' pyproject.toml)"
