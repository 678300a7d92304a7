"""The README's research-code example runs as written and computes what it says."""

import math
import pathlib
import re

import jax
import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_and_its_numbers_agree(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    ns: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), ns)
    out = capsys.readouterr().out
    numbers = re.findall(r"-?\d+\.\d+(?:e[-+]\d+)?|nan|inf", out)
    assert len(numbers) >= 12 and all(math.isfinite(float(x)) for x in numbers), out
    # One jitted step was taken: the counter moved and every main parameter changed.
    state, method = ns["state"], ns["method"]
    assert int(state["step"]) == 1
    fresh = method.init(jax.random.key(0), ns["images"][:1])
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), fresh["main"]["params"], ns["w"])
    assert all(jax.tree.leaves(moved))
    assert {"G", "F", "Q", "beta", "lr"} <= set(ns["measurements"])
    # The direction's Q is the value gap of Eq. 8 on the same batch, by the other public call.
    w, a, noisy = ns["w"], ns["a"], ns["noisy"]
    gap = float(ns["gap"](w, a, noisy, ns["main_fn"], ns["meta_fn"], 0.1))
    assert abs(float(ns["aux"]["Q"]) - gap) <= 1e-5 * max(1.0, abs(gap)), (ns["aux"]["Q"], gap)
    assert float(ns["aux"]["beta"]) >= 0.0
