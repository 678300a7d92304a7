"""The benchmark commands run and write their JSON (CE on a ResNet-8, `--depth 8`, a few steps;
the default is the paper's ResNet-32, checked by its parameter count), and the GPU suite's
commands are valid: a GPU session runs them as they are, so a broken script would cost device
time."""

import importlib
import itertools
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import pytest

from benchmarks import common, epoch_time, full_run, step_time

SUITE = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.sh"


@pytest.fixture(autouse=True)
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return tmp_path


def test_step_time_writes_its_table_after_each_round(results, monkeypatch, capsys):
    written = []
    write = common.write
    monkeypatch.setattr(common, "write", lambda n, r: written.append(n) or write(n, r))
    argv = ["--methods", "ce", "--repeats", "2", "--rounds", "2", "--warmup", "0", "--tag", "t"]
    assert step_time.main([*argv, "--depth", "8"]) == 0
    assert written == ["step_time_t_k10_d8"] * 2
    record = json.loads((results / "step_time_t_k10_d8.json").read_text())
    assert record["depth"] == 8
    (row,) = record["rows"]
    assert row["method"] == "ce" and row["repeats"] == 2 and row["rounds"] == 2
    assert len(row["round_median_s"]) == 2 and row["ratio_to_ce_rounds"] == [1.0, 1.0]
    assert 0 < row["min_s"] <= row["median_s"] and row["ratio_to_ce"] == 1.0
    assert row["images_per_s"] == pytest.approx(200 / row["median_s"])
    assert row["compile_s"] > 0 and row["peak_memory_bytes_so_far"] > 0
    assert {"jax", "device", "cpu", "date"} <= set(record["machine"]), record["machine"]
    assert "ce " in capsys.readouterr().out


def test_step_time_ratios_are_taken_round_by_round():
    # The machine slowed down 4x in round 2 for both: each round says 2x, then 1x.
    row = {}
    step_time.summarise(row, [[2.0, 2.0], [4.0, 4.0]], [[1.0, 1.0], [4.0, 4.0]])
    assert row["ratio_to_ce_rounds"] == [2.0, 1.0] and row["ratio_to_ce"] == 1.5
    assert row["median_s"] == 3.0 and row["min_s"] == 2.0 and row["round_median_s"] == [2.0, 4.0]
    assert row["repeats"] == 2 and row["rounds"] == 2 and row["images_per_s"] == 200 / 3.0
    no_ce = {}
    step_time.summarise(no_ce, [[1.0]], None)
    assert no_ce["ratio_to_ce"] is None and no_ce["ratio_to_ce_rounds"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--methods", "ce,sgd"], "--methods: unknown ['sgd']; allowed values: ce, ebomlc-paper"),
        (["--rounds", "0"], "--rounds and --repeats must be at least 1, got 0, 10"),
        (["--depth", "30"], "--depth: 30; allowed values: 6n+2 for n >= 1"),
    ],
)
def test_step_time_rejects_bad_arguments_before_compiling(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(step_time, "prepare", lambda *a: pytest.fail("compiled"))
    with pytest.raises(SystemExit) as exit_:
        step_time.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_epoch_time_compares_scan_and_loop_and_writes_after_each(results, monkeypatch):
    written = []  # rows in each write: a run cut short keeps the rows measured before the cut
    write = common.write
    monkeypatch.setattr(common, "write", lambda n, r: written.append(len(r["rows"])) or write(n, r))
    argv = ["--method", "ce", "--num-classes", "10", "--steps", "2", "--rounds", "2", "--tag", "t"]
    assert epoch_time.main([*argv, "--depth", "8"]) == 0
    assert written == [1, 2, 2, 2]  # each configuration compiled, then each round
    record = json.loads((results / "epoch_time_t_ce_d8.json").read_text())
    assert record["args"]["depth"] == 8
    assert [r["mode"] for r in record["rows"]] == ["scan", "loop"]
    scan, loop = record["rows"]
    for r in record["rows"]:
        assert r["steps_per_epoch"] == 2 and r["first_epoch_s"] > 0
        assert len(r["epoch_s_rounds"]) == 2 and r["epoch_s"] > 0
        assert r["steps_per_s"] == pytest.approx(2 / r["epoch_s"])
    assert scan["ratio_to_first"] == 1.0
    ratios = [a / b for a, b in zip(loop["epoch_s_rounds"], scan["epoch_s_rounds"], strict=True)]
    assert loop["ratio_to_first"] == pytest.approx(sum(ratios) / 2)  # the median of two


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--modes", "scan,sacn"], "--modes: 'scan,sacn'; allowed values: scan, loop"),
        (["--rounds", "0"], "--rounds and --epochs must be at least 1, got 0, 1"),
        (["--seeds-mode", "pmap"], "argument --seeds-mode: invalid choice: 'pmap'"),
        (["--depth", "2"], "--depth: 2; allowed values: 6n+2 for n >= 1"),
    ],
)
def test_epoch_time_rejects_bad_arguments_before_compiling(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(common, "synthetic_cifar", lambda *a, **k: pytest.fail("started"))
    with pytest.raises(SystemExit) as exit_:
        epoch_time.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_full_run_trains_evaluates_checkpoints_and_extrapolates(results):
    argv = ["--method", "ce", "--num-classes", "10", "--epochs", "2", "--steps", "2"]
    assert full_run.main([*argv, "--depth", "8", "--test-images", "200", "--tag", "t"]) == 0
    record = json.loads((results / "full_run_t_ce_k10_s1_e2_d8.json").read_text())
    assert record["steps_per_epoch"] == 2 and record["args"]["checkpoint"] == 1
    first, steady = record["first_epoch_s"], record["steady_epoch_s"]
    assert 0 < steady and record["extrapolated_120_epochs_s"] == pytest.approx(first + 119 * steady)
    assert record["train_and_eval_s"] >= first + steady


def test_benchmarks_time_the_papers_resnet32_unless_told_otherwise():
    for module in (step_time, epoch_time, full_run):
        assert module.parser().parse_args([]).depth == 32, module.__name__
    for depth, blocks in ((32, 5), (8, 1), (110, 18)):
        method = common.make_method("ebomlc-paper", 10, depth=depth)
        assert method.main_model.blocks_per_stage == blocks
        assert tuple(method.main_model.widths) == (16, 32, 64)
    ce = common.make_method("ce", 10)
    shapes = jax.eval_shape(ce.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), float))
    assert sum(x.size for x in jax.tree.leaves(shapes["main"]["params"])) == 464_154  # K = 10


def suite(tmp_path, **env) -> str:
    env = {**os.environ, "OUT": "", **env}
    out = subprocess.run(
        ["bash", str(SUITE), "t"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_gpu_suite_commands_parse_with_the_benchmarks_own_parsers(tmp_path):
    lines = suite(tmp_path, DRY_RUN="1", BUDGET="100000").splitlines()
    commands = [shlex.split(line[2:]) for line in lines if line.startswith("+ ")]
    assert len(commands) == 7, lines
    outputs = set()
    for words in commands:
        env = list(itertools.takewhile(lambda w: re.match(r"[A-Z_]+=", w), words))
        assert all(w.startswith("XLA_FLAGS=--xla_gpu_") for w in env), words
        py, dash_m, module, *argv = words[len(env) :]
        assert (py, dash_m) == ("python3", "-m") and module.startswith("benchmarks."), words
        importlib.import_module(module).parser().parse_args(argv)  # SystemExit if a flag is wrong
        outputs.add((module, argv[argv.index("--tag") + 1]))
    assert len(outputs) == 7  # no item overwrites another's results file


def test_gpu_suite_skips_what_does_not_fit_its_budget(tmp_path):
    out = suite(tmp_path, DRY_RUN="1", BUDGET="200")
    ran = [line for line in out.splitlines() if line.startswith("+ ")]
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(ran) == 2 and len(skipped) == 5, out
    assert "--modes scan,loop" in ran[0] and "cmdbuf" in ran[1]


def test_gpu_suite_runs_each_item_with_its_environment_and_goes_on_after_a_failure(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text(
        '#!/usr/bin/env bash\necho "RAN [${XLA_FLAGS:-}] $*"\n'
        'case "$*" in *step_time*) exit 3;; esac\n'
    )
    fake.chmod(0o755)
    out = suite(tmp_path, PYTHON=str(fake), BUDGET="1000", XLA_FLAGS="")
    ran = [line for line in out.splitlines() if line.startswith("RAN [") and "-m " in line]
    assert len(ran) == 7, out
    assert ran[1].startswith("RAN [--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL] -m")
    assert all(line.startswith("RAN [] -m") for i, line in enumerate(ran) if i != 1)
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "(exit 3)" in failed[0] and "step_time" in failed[0], out


def test_benchmarks_import_nothing_the_gpu_image_lacks():
    # The lent GPU machines have jax, flax, optax, orbax and chex but no tensorflow, tfds, clu or
    # ml_collections (device KINDS.md); what the suite runs must not import them.
    code = """
import sys
from benchmarks import common, epoch_time, full_run, step_time
from ebomlc_jax import checkpoint, epochs, evaluate
from ebomlc_jax.data import device
absent = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections")
print(sorted({m.split(".")[0] for m in sys.modules} & set(absent)))
"""
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
