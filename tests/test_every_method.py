"""Every registered method, on an easy problem (digits, 20% uniform noise, the tiny config's
ResNet at widths 8/16, 8 epochs of 40 steps): it learns (test accuracy well above chance), and a
run interrupted after epoch 3 and started again in the same workdir ends with bitwise the state
of the run that was never interrupted (tests/test_train.py also kills run.py itself).

The interruption comes before the epoch-level hooks of the methods that have them (GLC's phase
boundary at epoch 4, DivideMix's divisions from epoch 1 on), so the resumed run crosses them.
Each method runs in a subprocess with XLA's default codegen on one device: 320 steps run about
10x faster than at the -O0 the in-process tests compile with.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from ebomlc_jax import methods
from ebomlc_jax.cpu import xla

TESTS = pathlib.Path(__file__).resolve().parent
AT_LEAST = 0.5  # test accuracy; chance is 0.1


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_every_method_learns_and_resumes_exactly(name, tmp_path):
    env = {
        **os.environ,
        "XLA_FLAGS": xla.with_cpu_flags(""),
        "PYTHONPATH": f"{TESTS.parent}:{TESTS}",
    }
    out = subprocess.run(
        [sys.executable, str(TESTS / "every_method_run.py"), name, str(tmp_path)],
        cwd=TESTS.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["accuracy"] >= AT_LEAST, report
    assert report["checkpoint_at_cut"] == 3 and report["final_epochs"] == [8, 8], report
    assert report["leaves"] > 0 and report["differ"] == [], report
    assert report["resumed_accuracy"] == report["accuracy"]
