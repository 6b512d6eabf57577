"""Check that two `make demo` reports (e.g. from two ComfyUI versions) give the same figures.

Every number of report.md must agree to the printed digit; only the wall times and the ComfyUI version
may differ. Exit 1 with the differing lines otherwise.

Usage: scripts/py scripts/compare_demo.py demo_output demo_output/comfyui-0.28.2
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path

#: what may differ between two runs of the same demo: how long it took, and on which ComfyUI
VARYING = [(re.compile(r"\bin \d+(\.\d+)? s\b"), "in <wall> s"),
           (re.compile(r"ComfyUI \d+\.\d+\.\d+"), "ComfyUI <version>")]


def normalised(report: Path) -> list[str]:
    lines = report.read_text().splitlines()
    for pattern, replacement in VARYING:
        lines = [pattern.sub(replacement, line) for line in lines]
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    a, b = (Path(p) / "report.md" for p in argv[1:])
    diff = list(difflib.unified_diff(normalised(a), normalised(b), str(a), str(b), lineterm=""))
    if diff:
        print("the demo reports differ:\n" + "\n".join(diff))
        return 1
    print(f"{a} and {b} give the same figures")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
