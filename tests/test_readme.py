"""The README's research-code example runs as written."""

import math
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'G'" in out and "'beta'" in out
    # Every number it prints is finite (an eval-mode-BN version once printed "nan nan").
    numbers = re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?|nan|inf", out)
    assert len(numbers) >= 12, out
    assert all(math.isfinite(float(x)) for x in numbers), out
