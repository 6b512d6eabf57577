# The two commands of the README. Both set up what they need (the ComfyUI host in a cache folder
# outside the repo: scripts/setup_host.sh) on a fresh machine.
PY := scripts/py

.PHONY: demo test lint host workflows

demo: host
	$(PY) scripts/demo.py --out demo_output

test: host
	$(PY) -m pytest tests -q

lint: host
	$(PY) -m ruff check .

host:
	scripts/setup_host.sh

workflows: host
	$(PY) scripts/make_workflows.py
