"""A new user's first hour: a failed start does not block the corrected rerun, setup-only fields
never block a resume, the paper's batches run on 1, 2, 4 and 8 devices with the numbers of one,
a bad flag is one line, and only process 0 writes."""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import checkpoint_epochs, flat, restore, tiny

from ebomlc_jax import parallel, train
from ebomlc_jax.data import DatasetUnavailableError
from ebomlc_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_py(args, **env):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, time.monotonic() - started


def test_a_failed_start_then_the_corrected_rerun_in_the_same_workdir(tmp_path):
    workdir = str(tmp_path / "run")
    missing = tiny({"data.dataset": "cifar10", "data.data_dir": str(tmp_path / "tfds")})
    with pytest.raises(DatasetUnavailableError, match="--config.data.download=True"):
        train.train_and_evaluate(missing, workdir)
    with pytest.raises(ConfigError, match=r"data\.batch_size=2000"):  # a check on the data
        train.train_and_evaluate(tiny({"data.batch_size": 2000}), workdir)
    assert not (tmp_path / "run" / "config.json").exists()  # no run started: nothing to refuse
    summary = train.train_and_evaluate(tiny({"num_epochs": 1}), workdir)
    assert summary["config"]["data"]["batch_size"] == 32


def test_setup_only_fields_never_block_a_resume_and_a_refusal_names_the_field(tmp_path):
    workdir = str(tmp_path / "run")
    first = train.train_and_evaluate(tiny({"num_epochs": 1, "checkpoint.keep": 3}), workdir)
    setup = {
        "num_epochs": 2,  # a longer run, resumed: the learning rate decays at fractions
        "data.download": True,
        "data.data_dir": str(tmp_path / "elsewhere"),
        "parallel.num_devices": 1,
        "log_every_steps": 1,
        "figures": True,
        "checkpoint.asynchronous": False,
        "method.mlc_d.k": 3,  # another method's block
    }
    with pytest.raises(ConfigError, match=r"num_epochs: 1 \(saved\) -> 2 \(now\)") as info:
        train.train_and_evaluate(tiny(setup), workdir)
    assert "differing fields:\n  num_epochs" in str(info.value)
    assert "data_dir" not in str(info.value) and "mlc_d" not in str(info.value)
    assert "set these fields back" in str(info.value)
    del setup["num_epochs"]
    again = train.train_and_evaluate(
        tiny({"num_epochs": 1, "checkpoint.keep": 3, **setup}), workdir
    )
    assert again == first  # resumed (a finished run reports its summary), not refused


@pytest.mark.parametrize("available,expected", [(1, 1), (2, 2), (4, 2), (5, 5), (8, 5), (16, 10)])
def test_the_papers_batches_use_the_largest_device_count_that_divides_them(available, expected):
    """Batches of 100 with clean halves of 50 (the paper): 2 of 4 devices, 5 of 8, one warning."""
    count, warning = parallel.choose_device_count(0, available, 100, 100, 2)
    assert count == expected
    if count == available:
        assert warning is None
    else:
        assert f"using {count} of {available} devices" in warning
        assert f"--config.parallel.num_devices={count}" in warning
    with pytest.raises(ConfigError, match=r"parallel\.num_devices=4 .*one of \[1, 2, 5\]"):
        parallel.choose_device_count(4, 8, 100, 100, 2)


def test_the_papers_batches_on_eight_devices_give_the_numbers_of_one(tmp_path):
    """run.py on 8 fake CPU devices (a subprocess: the device count is fixed at start) with the
    paper's batch sizes: it warns, uses 5, and ends where a one-device run ends."""
    args = [
        "--config=tests/tiny_config.py",
        "--config.num_epochs=1",
        "--config.data.batch_size=100",
        "--config.data.clean_batch_size=100",
    ]
    flags = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
    proc, _ = run_py([*args, f"--workdir={tmp_path / 'eight'}"], XLA_FLAGS=flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning: using 5 of 8 devices" in proc.stdout, proc.stdout
    assert "devices: 5 x cpu" in proc.stdout
    config = tiny({"num_epochs": 1, "data.batch_size": 100, "data.clean_batch_size": 100})
    config.parallel.num_devices = 1
    train.train_and_evaluate(config, str(tmp_path / "one"))
    (_, eight, _), (_, one, _) = (
        restore(tmp_path / "eight", config),
        restore(tmp_path / "one", config),
    )
    a, b = flat(eight), flat(one)
    for key in a:
        if a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.method.name=ebomcl"], "ConfigError: method.name='ebomcl' is not allowed"),
        (["--config=configs/cifar100_flip40"], "ConfigError: --config='configs/cifar100_flip40'"),
        (["--config.method.ebomlc.rho=2.0"], "ConfigError: method.ebomlc.rho=2.0 is not allowed"),
    ],
)
def test_a_bad_flag_is_one_line_and_no_traceback(args, message, tmp_path):
    proc, seconds = run_py([*args, f"--workdir={tmp_path}"])
    print(f"{args}: {seconds:.1f} s")  # measured, not asserted (`pytest -s` shows it)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr
    assert not any(tmp_path.iterdir())


def test_only_process_zero_writes_files(tmp_path, monkeypatch, capsys):
    """On hosts other than 0 nothing is written or printed; the checkpoints are orbax's (every
    host takes part in saving them)."""
    monkeypatch.setattr(train, "writes_files", lambda: False)
    summary = train.train_and_evaluate(tiny({"num_epochs": 1, "figures": True}), str(tmp_path))
    assert summary["final_test_accuracy"] >= 0.0
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
    assert checkpoint_epochs(tmp_path) == [1]
    assert jax.process_index() == 0  # the real index was left alone (orbax reads it)


def test_a_digits_run_never_imports_tensorflow(tmp_path):
    code = (
        "import sys; from ebomlc_jax import train; import tiny_config;"
        f"train.train_and_evaluate(tiny_config.get_config(), {str(tmp_path)!r});"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'clu')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "summary.json").read_text())["dataset"] == "digits"
