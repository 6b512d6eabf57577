"""Shared pytest set-up: the repo root is importable (the test bed ``testbed``, ``solvers``, ``editing``,
``toyworld``), however pytest was started."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
