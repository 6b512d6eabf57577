"""The README's Python example runs and does what it says (an exact round trip)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_python_example_round_trips_exactly(capsys):
    text = README.read_text()
    section = text[text.index("## Using the solvers from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README snippet
    x0, again = scope["x0"], scope["x0_again"]
    assert float((again - x0).norm() / x0.norm()) < 1e-12
    assert "relative round-trip error" in capsys.readouterr().out
