"""The training loop end to end on the tiny digits config: outputs, the command line, resume after
SIGKILL (bitwise), config changes, NaN/Inf, corrupt and incompatible checkpoints, bad input."""

import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import conftest
import jax
import ml_collections
import numpy as np
import pytest
from helpers import (
    all_bad_input_cases,
    case_ids,
    check_bad_input,
    checkpoint_epochs,
    flat,
    no_compute,
    read_jsonl,
    restore,
    tiny,
)

from ebomlc_jax import checkpoint, logs, train, validate
from ebomlc_jax.analysis import runs
from ebomlc_jax.checkpoint import CheckpointError
from ebomlc_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
FINISHED_EPOCHS = 4  # the shared finished run: 4 epochs of 3 steps, checkpoint.keep=2
KEEP = 2
STEPS = 3  # tiny_config.steps_per_epoch


# A failed orbax restore leaves coroutines that were never awaited; their warnings (raised when
# they are garbage collected, in whichever test runs then) are noise.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning",
    "ignore:coroutine .* was never awaited:RuntimeWarning",
)


# ----------------------------------------------------------------------------- helpers
@pytest.fixture
def env():
    """Environment of the run.py subprocesses: this one's (4 fake CPU devices, the cache, quick
    codegen: the programs of the in-process runs compile once for both)."""
    return dict(os.environ)


@pytest.fixture
def users_env(env):
    """`env` with XLA:CPU's default codegen (no conftest.QUICK_CODEGEN): run.py as users run it."""
    flags = env["XLA_FLAGS"].replace(conftest.QUICK_CODEGEN, "").strip()
    assert "optimization_level" not in flags, flags
    return {**env, "XLA_FLAGS": flags}


def eval_lines(workdir) -> list[dict]:
    return [r for r in read_jsonl(pathlib.Path(workdir) / "metrics.jsonl") if "eval/epoch" in r]


def damage(workdir, epoch: int) -> None:
    """Overwrite the array data files of one checkpoint with garbage (metadata left intact)."""
    state = pathlib.Path(workdir) / "checkpoints" / str(epoch) / "state"
    files = [f for f in state.rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files, f"no data files under {state}"
    for f in files:
        f.write_bytes(b"not a checkpoint")


def run_py(args, env, timeout=300):
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def clean_accuracy_by_epoch(workdir) -> dict[int, float]:
    return {r["eval/epoch"]: r["eval/clean_accuracy"] for r in eval_lines(workdir)}


# ----------------------------------------------------------------------------- a finished run
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-epoch tiny run with figures (keep 2 checkpoints): (workdir, config, summary)."""
    workdir = tmp_path_factory.mktemp("finished")
    config = tiny({"num_epochs": FINISHED_EPOCHS, "checkpoint.keep": KEEP, "figures": True})
    summary = train.train_and_evaluate(config, str(workdir))
    return workdir, config, summary


@pytest.fixture
def finished_copy(finished, tmp_path):
    """A private copy of the finished run's workdir (tests damage or extend it)."""
    workdir, config, summary = finished
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return copy, config


def test_tiny_run_writes_every_output(finished):
    workdir, config, returned = finished
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary == returned
    for key in ("final_test_accuracy", "test_accuracy_at_best_clean", "best_clean_accuracy"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert 0.0 <= summary["final_meta_correction_accuracy"] <= 1.0
    assert 1 <= summary["best_clean_epoch"] <= FINISHED_EPOCHS
    assert summary["wall_time_s"] > 0 and summary["steps_per_sec"] > 0
    # Uniform noise over all K classes: realised rate r (K-1)/K = 0.54, on 1,298 noisy labels.
    assert summary["realised_noise_rate"] == pytest.approx(0.6 * 9 / 10, abs=0.03)
    assert summary["config"] == json.loads(config.to_json_best_effort())
    assert summary["method"] == "ebomlc" and summary["dataset"] == "digits"
    assert json.loads((workdir / "config.json").read_text()) == summary["config"]

    # metrics.jsonl: train/ scalars every log_every_steps (2) and at each epoch's end; one eval
    # line per epoch at its last step.
    rows = read_jsonl(workdir / "metrics.jsonl")
    train_steps = sorted({r["step"] for r in rows if any(k.startswith("train/") for k in r)})
    assert train_steps == [2, 3, 4, 6, 8, 9, 10, 12]
    evals = eval_lines(workdir)
    assert [r["eval/epoch"] for r in evals] == list(range(1, FINISHED_EPOCHS + 1))
    assert [r["step"] for r in evals] == [STEPS * e for e in range(1, FINISHED_EPOCHS + 1)]
    for r in evals:
        for key in ("eval/test_accuracy", "eval/clean_accuracy", "eval/meta_correction_accuracy"):
            assert 0.0 <= r[key] <= 1.0, key
        for key in runs.DIAGNOSTICS:  # both groups are non-empty at 60% noise: all defined
            assert 0.0 <= r[f"eval/{key}"] <= 1.0, key
        assert np.isfinite(r["eval/clean_loss"]) and r["eval/clean_loss"] > 0
    last = evals[-1]
    assert last["eval/test_accuracy"] == pytest.approx(summary["final_test_accuracy"])
    best = max(evals, key=lambda r: r["eval/clean_accuracy"])  # first of equal maxima
    assert summary["best_clean_epoch"] == best["eval/epoch"]
    assert summary["test_accuracy_at_best_clean"] == pytest.approx(best["eval/test_accuracy"])

    # TensorBoard events with the same scalars.
    events = list((workdir / "tensorboard").rglob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    import tensorflow as tf

    tags = {
        v.tag
        for e in events
        for event in tf.compat.v1.train.summary_iterator(str(e))
        for v in event.summary.value
    }
    assert {"eval/test_accuracy", "eval/clean_accuracy", "train/F", "train/G"} <= tags
    assert {f"eval/{key}" for key in runs.DIAGNOSTICS} <= tags

    # Checkpoints: the last KEEP epochs, plus the best by clean accuracy (ties: any of them).
    kept = checkpoint_epochs(workdir)
    clean = clean_accuracy_by_epoch(workdir)
    last_n = list(range(FINISHED_EPOCHS - KEEP + 1, FINISHED_EPOCHS + 1))
    extra = sorted(set(kept) - set(last_n))
    assert set(last_n) <= set(kept) and len(extra) <= 1, kept
    if extra:
        assert clean[extra[0]] == max(clean.values())
    else:
        assert max(clean[e] for e in last_n) == max(clean.values())
    assert not [p for p in (workdir / "checkpoints").iterdir() if "tmp" in p.name]

    # The meta model's confusion on D' at the last epoch.
    confusion = json.loads((workdir / "meta_confusion.json").read_text())
    counts = np.array(confusion["counts"])
    assert confusion["epoch"] == FINISHED_EPOCHS and confusion["num_classes"] == 10
    assert counts.shape == (10, 10) and counts.min() >= 0
    assert counts.sum() == 1298  # |D'|
    assert np.trace(counts) / counts.sum() == pytest.approx(
        summary["final_meta_correction_accuracy"], abs=1e-6
    )

    noise = json.loads((workdir / "noise.json").read_text())
    assert noise["nominal_rate"] == 0.6 and noise["kind"] == "uniform"
    assert noise["realised_rate"] == summary["realised_noise_rate"]
    np.testing.assert_allclose(np.sum(noise["transition"], axis=1), 1.0, rtol=1e-6)

    # The confusion history: one line per epoch, the mislabelled and correct examples apart.
    lines = read_jsonl(workdir / "meta_confusion_history.jsonl")
    assert [line["epoch"] for line in lines] == list(range(1, FINISHED_EPOCHS + 1))
    history = runs.load_run(workdir).confusion_history
    assert history.mislabelled.shape == history.correct.shape == (FINISHED_EPOCHS, 10, 10)
    num_wrong = round(noise["realised_rate"] * 1298)
    np.testing.assert_array_equal(history.mislabelled.sum((1, 2)), num_wrong)
    np.testing.assert_array_equal(history.correct.sum((1, 2)), 1298 - num_wrong)
    np.testing.assert_array_equal(history.mislabelled[-1] + history.correct[-1], counts)
    # Changed to the true label = the mislabelled examples whose argmax is the true label.
    np.testing.assert_array_equal(history.changed_to_true, np.trace(history.mislabelled, 0, 1, 2))
    off_diagonal = history.correct.sum((1, 2)) - np.trace(history.correct, 0, 1, 2)
    assert (history.changed >= history.changed_to_true + off_diagonal).all()
    for key, values in history.diagnostics().items():
        np.testing.assert_allclose(values, [r[f"eval/{key}"] for r in evals], rtol=1e-6)
        assert summary[f"final_{key}"] == pytest.approx(values[-1], rel=1e-6), key
    screen = logs.summary_screen(summary)
    corrected = f"{100 * summary['final_meta_accuracy_on_mislabelled']:.2f}% corrected"
    assert re.search(rf"meta on mislabelled +{re.escape(corrected)}", screen), screen
    assert f"{100 * summary['final_meta_change_rate']:.2f}% of D'" in screen

    # Figures: the curves, the meta diagnostics and the correction heatmaps (all of D'; the
    # mislabelled and correct examples apart), real PNG files.
    label = "ebomlc_paper_uniform-0.6_seed_0"
    names = ["curves.png", "meta_diagnostics.png", f"heatmap_{label}.png",
             f"heatmap_groups_{label}.png"]  # fmt: skip
    assert sorted(p.name for p in workdir.glob("*.png")) == sorted(names)
    for png in (workdir / name for name in names):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_command_line_prints_progress_and_summary(tmp_path, env):
    workdir = tmp_path / "cli"
    proc = run_py(["--config=tests/tiny_config.py", f"--workdir={workdir}"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # The banner, then a line when compilation starts and one when it ends.
    assert re.search(
        r"^ebomlc_jax: ebomlc/paper on digits \(uniform noise 0\.6\), seed 0$", out, re.M
    )
    assert re.search(r"^  devices: 4 x cpu \(cpu\), parallel\.mode=jit$", out, re.M), out
    assert "  steps: 3 epochs x 3 = 9; from scratch" in out
    assert re.search(rf"^  workdir: {re.escape(str(workdir))}$", out, re.M)
    assert (
        out.index("compiling the training epoch") < out.index("compiled in") < out.index("epoch 1")
    )
    # Inside epochs when a multiple of log_every_steps (2) is crossed, except at an epoch's last
    # step; then each epoch.
    for step in (2, 5, 8):
        epoch = -(-step // 3)
        assert re.search(
            rf"^epoch {epoch}/3 \.\.\.  step {step}/9  (- |[\d.]+ )steps/s  ETA \S+  \|  G \S+  F ",
            out,
            re.M,
        ), out
    for e in (1, 2, 3):
        assert re.search(
            rf"^epoch {e}/3  step {3 * e}/9  [\d.]+ steps/s  ETA \S+  \|  .*test [\d.]+  "
            rf"clean [\d.]+  meta [\d.]+$",
            out,
            re.M,
        ), out
    assert "realised 0.5" in out
    for label in ("final test accuracy", "test acc. at best clean", "meta correction (D')"):
        assert re.search(rf"^  {re.escape(label)} +[\d.]+%", out, re.M), out
    assert re.search(rf"^  run directory +{re.escape(str(workdir))}$", out, re.M), out
    summary = json.loads((workdir / "summary.json").read_text())
    assert f"{100 * summary['final_test_accuracy']:.2f}%" in out
    assert checkpoint_epochs(workdir) == [1, 2, 3]


def test_sigkill_then_rerun_equals_an_uninterrupted_run_bitwise(tmp_path, users_env):
    env = users_env
    num_epochs = 8  # leaves several epochs after the kill point even on a fast machine
    config = tiny({"num_epochs": num_epochs})
    args = ["--config=tests/tiny_config.py", f"--config.num_epochs={num_epochs}"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    log = tmp_path / "first_attempt.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "run.py", *args, f"--workdir={killed}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            while not any(e >= 2 for e in checkpoint_epochs(killed)):
                if proc.poll() is not None:
                    pytest.fail(
                        f"run.py exited ({proc.returncode}) before checkpoint 2:\n"
                        + log.read_text()[-3000:]
                    )
                if time.monotonic() > deadline:
                    pytest.fail("no checkpoint of epoch 2 after 300 s")
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"run.py finished (rc {proc.returncode}) before the SIGKILL reached it: the test proves "
        "nothing; raise num_epochs"
    )
    at_kill = checkpoint_epochs(killed)
    assert max(at_kill) < num_epochs, (
        f"all {num_epochs} epochs were checkpointed before the kill; raise num_epochs"
    )

    rerun = run_py([*args, f"--workdir={killed}"], env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = re.search(r"^resumed from \S+ after epoch (\d+)$", rerun.stdout, re.M)
    assert resumed, rerun.stdout
    assert 2 <= int(resumed.group(1)) <= max(at_kill)
    assert f"epoch {int(resumed.group(1))}/{num_epochs} " not in rerun.stdout  # not redone
    assert f"epoch {num_epochs}/{num_epochs} " in rerun.stdout

    uninterrupted = run_py([*args, f"--workdir={whole}"], env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert "resumed" not in uninterrupted.stdout

    (epoch_a, state_a, record_a), (epoch_b, state_b, record_b) = (
        restore(killed, config),
        restore(whole, config),
    )
    assert epoch_a == epoch_b == num_epochs
    a, b = flat(state_a), flat(state_b)
    assert a.keys() == b.keys()
    for part in (
        "['main']['params']",
        "['main']['batch_stats']",
        "['main_opt']",
        "['meta']",
        "['meta_opt']",
        "['rng']",
        "['step']",
    ):
        assert any(k.startswith(part) for k in a), (part, sorted(a))
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert int(a["['step']"]) == num_epochs * STEPS
    assert record_a["seeds"][0]["best_clean_epoch"] == record_b["seeds"][0]["best_clean_epoch"]
    assert (
        record_a["seeds"][0]["best_clean_accuracy"] == record_b["seeds"][0]["best_clean_accuracy"]
    )
    # The final evaluation, too.
    sa = json.loads((killed / "summary.json").read_text())
    sb = json.loads((whole / "summary.json").read_text())
    for key in ("final_test_accuracy", "final_meta_correction_accuracy", "best_clean_epoch"):
        assert sa[key] == sb[key], key


def test_rerun_of_a_finished_run_trains_nothing_and_prints_its_summary(finished_copy, capsys):
    workdir, config = finished_copy
    saved = json.loads((workdir / "summary.json").read_text())
    capsys.readouterr()
    assert train.train_and_evaluate(config, str(workdir)) == saved
    out = capsys.readouterr().out
    assert re.search(rf"^resumed from \S+ after epoch {FINISHED_EPOCHS}$", out, re.M), out
    assert f"already finished ({FINISHED_EPOCHS} epochs)" in out
    accuracy = f"{100 * saved['final_test_accuracy']:.2f}%"
    assert re.search(rf"final test accuracy +{re.escape(accuracy)}", out), out
    assert not re.search(r"^epoch \d+/", out, re.M), out  # no epoch was trained
    assert len(eval_lines(workdir)) == FINISHED_EPOCHS


def test_changed_config_refuses_to_resume_unless_allowed(finished_copy, monkeypatch, capsys):
    workdir, config = finished_copy
    changed = config.copy_and_resolve_references()
    changed.method.ebomlc.rho = 0.3
    with monkeypatch.context() as m:
        no_compute(m)
        with pytest.raises(ConfigError) as info:
            train.train_and_evaluate(changed, str(workdir))
    message = str(info.value)
    assert "method.ebomlc.rho: 0.2 (saved) -> 0.3 (now)" in message
    assert "resume_with_changed_config=True" in message
    assert len(re.findall(r"\(saved\) ->", message)) == 1  # only the field that differs
    assert len(eval_lines(workdir)) == FINISHED_EPOCHS  # nothing trained or logged

    changed.resume_with_changed_config = True
    changed.num_epochs = FINISHED_EPOCHS + 1
    capsys.readouterr()
    train.train_and_evaluate(changed, str(workdir))
    out = capsys.readouterr().out
    assert re.search(rf"^resumed from \S+ after epoch {FINISHED_EPOCHS}$", out, re.M), out
    assert f"epoch 1/{FINISHED_EPOCHS + 1} " not in out
    assert [r["eval/epoch"] for r in eval_lines(workdir)] == list(range(1, FINISHED_EPOCHS + 2))
    assert max(checkpoint_epochs(workdir)) == FINISHED_EPOCHS + 1
    assert json.loads((workdir / "config.json").read_text())["method"]["ebomlc"]["rho"] == 0.3


def test_divergence_stops_with_the_quantity_and_step_and_keeps_the_last_checkpoint(
    finished_copy,
):
    workdir, config = finished_copy
    before = checkpoint_epochs(workdir)
    bad = tiny(
        {
            "num_epochs": FINISHED_EPOCHS + 1,
            "checkpoint.keep": KEEP,
            "optim.lr": 1e30,
            "resume_with_changed_config": True,
        }
    )
    with pytest.raises(train.DivergenceError) as info:
        train.train_and_evaluate(bad, str(workdir))
    message = str(info.value)
    match = re.match(r"(\S+) is .* at step (\d+) \(epoch (\d+)\)", message)
    assert match, message
    name, step, epoch = match.group(1), int(match.group(2)), int(match.group(3))
    train_keys = {
        k[len("train/") :]
        for r in read_jsonl(workdir / "metrics.jsonl")
        for k in r
        if k.startswith("train/")
    }
    assert name in train_keys | {"eval/clean_loss"}, name
    assert epoch == FINISHED_EPOCHS + 1
    assert FINISHED_EPOCHS * STEPS < step <= (FINISHED_EPOCHS + 1) * STEPS  # 1-based, as logged
    assert f"end of epoch {FINISHED_EPOCHS}" in message
    # No checkpoint of the diverged epoch; the last good one restores.
    assert checkpoint_epochs(workdir) == before
    restored_epoch, state, _ = restore(workdir, config)
    assert restored_epoch == FINISHED_EPOCHS
    assert all(np.isfinite(x).all() for x in flat(state).values() if x.dtype.kind == "f")


def test_divergence_in_the_same_process_keeps_the_pending_checkpoint(tmp_path, env):
    """Epoch 1 is fine and its checkpoint is saved asynchronously; epoch 2 diverges (lr 1e29)
    and run.py exits with the error: the checkpoint of epoch 1 must be complete on disk."""
    args = [
        "--config.num_epochs=2",
        "--config.optim.decay_at=(0.5,)",
        "--config.optim.decay_factor=1e30",
    ]
    proc = run_py(["--config=tests/tiny_config.py", *args, f"--workdir={tmp_path}"], env)
    assert proc.returncode != 0
    assert re.search(r"DivergenceError: \S+ is .* at step \d+ \(epoch 2\)", proc.stderr), (
        proc.stderr[-3000:]
    )
    assert checkpoint_epochs(tmp_path) == [1], sorted(os.listdir(tmp_path / "checkpoints"))
    config = tiny({"num_epochs": 2, "optim.decay_at": (0.5,), "optim.decay_factor": 1e30})
    assert restore(tmp_path, config)[0] == 1


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(finished_copy, caplog, capsys):
    workdir, config = finished_copy
    damage(workdir, FINISHED_EPOCHS)
    more = tiny(
        {
            "num_epochs": FINISHED_EPOCHS + 1,
            "checkpoint.keep": KEEP,
            "resume_with_changed_config": True,
        }
    )
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(more, str(workdir))
    out = capsys.readouterr().out
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"checkpoint {FINISHED_EPOCHS} in" in w and "unreadable" in w for w in warnings)
    assert any(
        f"fell back to the checkpoint of epoch {FINISHED_EPOCHS - 1}" in w for w in warnings
    ), warnings
    assert re.search(rf"^resumed from \S+ after epoch {FINISHED_EPOCHS - 1}$", out, re.M), out
    assert f"epoch {FINISHED_EPOCHS}/{FINISHED_EPOCHS + 1} " in out  # redone
    assert f"epoch {FINISHED_EPOCHS + 1}/{FINISHED_EPOCHS + 1} " in out
    # The redone epoch's checkpoint is a good one, not the damaged one left in place (which is
    # kept aside for inspection).
    assert FINISHED_EPOCHS in checkpoint_epochs(workdir)
    assert (workdir / "checkpoints" / f"unreadable_{FINISHED_EPOCHS}" / "state").is_dir()
    damage(workdir, FINISHED_EPOCHS + 1)
    assert restore(workdir, more)[0] == FINISHED_EPOCHS


def test_only_process_zero_sets_unreadable_checkpoints_aside(finished_copy, monkeypatch):
    """On several hosts sharing the workdir, one renames, after a barrier all reload."""
    workdir, config = finished_copy
    damage(workdir, FINISHED_EPOCHS)
    barriers = []
    monkeypatch.setattr(checkpoint.multihost_utils, "sync_global_devices", barriers.append)
    monkeypatch.setattr(checkpoint.jax, "process_index", lambda: 1)
    assert restore(workdir, config)[0] == FINISHED_EPOCHS - 1
    assert len(barriers) == 1
    assert FINISHED_EPOCHS in checkpoint_epochs(workdir)  # left for process 0
    monkeypatch.setattr(checkpoint.jax, "process_index", lambda: 0)
    assert restore(workdir, config)[0] == FINISHED_EPOCHS - 1
    assert len(barriers) == 2
    assert FINISHED_EPOCHS not in checkpoint_epochs(workdir)
    assert (workdir / "checkpoints" / f"unreadable_{FINISHED_EPOCHS}").is_dir()


def test_a_failed_restore_reports_one_warning_not_tracebacks(finished_copy, monkeypatch):
    """orbax's leftover reads after a failed restore each reported "Event loop is closed"."""
    workdir, config = finished_copy
    damage(workdir, FINISHED_EPOCHS)
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    assert restore(workdir, config)[0] == FINISHED_EPOCHS - 1
    closed = [u for u in reported if str(u.exc_value) == "Event loop is closed"]
    assert closed == []
    with checkpoint._quiet_failed_reads():  # anything else still reaches the hook
        sys.unraisablehook(types.SimpleNamespace(exc_value=ValueError("x")))
    assert str(reported[-1].exc_value) == "x"


def test_an_incompatible_checkpoint_is_refused_from_its_metadata(tmp_path, monkeypatch):
    """No read starts (a failed one leaves orbax's others pending, reported at collection)."""
    ckpt = checkpoint.Checkpointer(tmp_path, asynchronous=False)
    ckpt.save(1, {f"p{i}": jax.numpy.ones((8, 8 + i % 3)) for i in range(12)}, {}, 0.0)
    like = {f"p{i}": jax.numpy.ones((8, 4 + i % 3)) for i in range(12)}
    monkeypatch.setattr(ckpt._manager, "restore", lambda *a, **k: pytest.fail("read started"))
    with pytest.raises(CheckpointError) as info:
        ckpt.restore_latest(like)
    message = str(info.value)
    assert "p0: checkpoint (8, 8), this run (8, 4)" in message, message
    assert "... 7 more" in message  # the first 5 of 12 differences, then a count
    saved, wanted = {"a": (2,), "b": (3,)}, {"a": (2,), "c": (1,)}
    assert checkpoint.shape_mismatches(saved, wanted) == [
        "b: in the checkpoint only",
        "c: not in the checkpoint",
    ]


def test_all_checkpoints_corrupt_is_an_error_not_a_restart(finished_copy):
    workdir, config = finished_copy
    kept = checkpoint_epochs(workdir)
    for e in kept:
        damage(workdir, e)
    rows = len(read_jsonl(workdir / "metrics.jsonl"))
    with pytest.raises(CheckpointError) as info:
        train.train_and_evaluate(config, str(workdir))
    message = str(info.value)
    assert "no checkpoint in" in message and "can be restored" in message
    for e in kept:
        assert f"epoch {e}:" in message
    assert checkpoint_epochs(workdir) == kept
    assert len(read_jsonl(workdir / "metrics.jsonl")) == rows  # nothing trained or logged


def test_incompatible_checkpoint_is_an_error_not_a_restart(finished_copy):
    workdir, config = finished_copy
    kept = checkpoint_epochs(workdir)
    rows = len(read_jsonl(workdir / "metrics.jsonl"))
    wider = tiny(
        {
            "num_epochs": FINISHED_EPOCHS + 1,
            "checkpoint.keep": KEEP,
            "model.widths": (8, 16),
            "resume_with_changed_config": True,
        }
    )
    with pytest.raises(CheckpointError, match="incompatible config/model") as error:
        train.train_and_evaluate(wider, str(workdir))
    # Found from the metadata, before any read starts: names an array and both shapes.
    assert re.search(r"main\.\S+: checkpoint \(\d+.*\), this run \(\d+", str(error.value))
    assert checkpoint_epochs(workdir) == kept
    assert len(read_jsonl(workdir / "metrics.jsonl")) == rows


# ----------------------------------------------------------------------------- bad input
BAD_INPUT = [
    (
        {"method.ebomlc.rho": 0.0},
        r"method\.ebomlc\.rho=0\.0 is not allowed; allowed values: a number in \(0, 1\]",
    ),
    ({"method.ebomlc.rho": 1.5}, r"method\.ebomlc\.rho=1\.5 .*a number in \(0, 1\]"),
    ({"method.ebomlc.xi": 0.0}, r"method\.ebomlc\.xi=0\.0 .*a number in \(0, 1\]"),
    ({"method.ebomlc.xi": 1.5}, r"method\.ebomlc\.xi=1\.5 .*a number in \(0, 1\]"),
    ({"method.ebomlc.delta": 0.0}, r"method\.ebomlc\.delta=0\.0 .*a number in \(0, inf\]"),
    ({"method.ebomlc.delta": -0.25}, r"method\.ebomlc\.delta=-0\.25 .*a number in \(0, inf\]"),
    ({"noise.rate": -0.1}, r"noise\.rate=-0\.1 .*a number in \[0, 1\]"),
    ({"noise.rate": 1.2}, r"noise\.rate=1\.2 .*a number in \[0, 1\]"),
    ({"noise.kind": "gaussian"}, r"noise\.kind='gaussian' .*'uniform', 'flip', 'pair'"),
    ({"method.name": "sgd"}, r"method\.name='sgd' .*\('ce', .*'ebomlc', .*'mlc', 'mlc_d'"),
    ({"method.ebomlc.variant": "v2"}, r"method\.ebomlc\.variant='v2' .*'paper', 'reference'"),
    ({"data.dataset": "mnist"}, r"data\.dataset='mnist' .*'cifar10', 'cifar100', 'digits'"),
    # 1,438 digits, 10 classes: round(0.003 * 1438 / 10) = 0 clean examples per class.
    ({"data.clean_fraction": 0.003}, r"data\.clean_fraction=0\.003 .*no clean example"),
    ({"data.batch_size": 2000}, r"data\.batch_size=2000 .*\[1, 1298\] \(set size\)"),
    ({"data.clean_batch_size": 142}, r"data\.clean_batch_size=142 .*\[1, 140\] \(set size\)"),
    (
        {"data.clean_batch_size": 31},
        r"data\.clean_batch_size=31 .*multiples of 2 \(ebomlc splits each clean batch in 2 parts",
    ),
    (
        {"method.ebomlc.joint_lower_pass": True, "method.ebomlc.clean_in_lower_loss": False},
        r"method\.ebomlc\.joint_lower_pass=True is not allowed with .*clean_in_lower_loss=False",
    ),
    ({"parallel.mode": "shard"}, r"parallel\.mode='shard' .*'jit', 'pmap'"),
    ({"parallel.seeds": "loop"}, r"parallel\.seeds='loop' .*'vmap', 'map'"),
    (
        {"num_parallel_seeds": 2, "parallel.mode": "pmap"},
        r"num_parallel_seeds=2 needs data\.input='device' and parallel\.mode='jit'",
    ),
    (
        {"num_parallel_seeds": 2, "parallel.num_devices": 2},
        r"parallel\.num_devices=2 .*0 or 1 with num_parallel_seeds=2",
    ),
    ({"method.ebomlc.k": 0}, r"method\.ebomlc\.k=0 .*an integer in \[1, inf\)"),
    (
        {"method.ebomlc.k": 2, "method.ebomlc.variant": "reference"},
        r"method\.ebomlc\.k=2 .*1 with variant='reference'",
    ),
    ({"method.name": "mlc_d", "method.mlc_d.k": 0}, r"method\.mlc_d\.k=0 .*\[1, inf\)"),
    ({"method.name": "mlc_d", "method.mlc_d.delta": 0.0}, r"method\.mlc_d\.delta=0\.0 .*\(0, inf"),
    ({"method.name": "ce", "method.ce.train_on": "all"}, r"method\.ce\.train_on='all' .*'both'"),
    ({"num_epochs": 0}, r"num_epochs=0 .*an integer in \[1, inf\)"),
    ({"steps_per_epoch": -1}, r"steps_per_epoch=-1 .*an integer in \[0, inf\)"),
    ({"num_parallel_seeds": 0}, r"num_parallel_seeds=0 .*an integer in \[1, inf\)"),
    ({"seed": -1}, r"seed=-1 .*an integer in \[0, 2147483647\]"),
    ({"data.clean_fraction": 1.0}, r"data\.clean_fraction=1\.0 .*a number in \(0, 1\)"),
    ({"data.batch_size": 0}, r"data\.batch_size=0 .*an integer in \[1, inf\)"),
    ({"data.augment_pad": -1}, r"data\.augment_pad=-1 .*an integer in \[0, inf\)"),
    ({"data.input": "disk"}, r"data\.input='disk' .*'device', 'host', 'tf_data'"),
    ({"optim.lr": 0.0}, r"optim\.lr=0\.0 .*a number in \(0, inf\)"),
    ({"optim.momentum": 1.0}, r"optim\.momentum=1\.0 .*a number in \[0, 1\)"),
    ({"optim.weight_decay": -1e-4}, r"optim\.weight_decay=-0\.0001 .*\[0, inf\)"),
    ({"optim.meta_lr": 0.0}, r"optim\.meta_lr=0\.0 .*a number in \(0, inf\)"),
    ({"optim.decay_factor": 0.0}, r"optim\.decay_factor=0\.0 .*a number in \(0, inf\)"),
    ({"optim.decay_at": (0.5, 1.5)}, r"optim\.decay_at=1\.5 .*a number in \(0, 1\]"),
    ({"model.dtype": "float16"}, r"model\.dtype='float16' .*'float32', 'bfloat16'"),
    ({"model.blocks_per_stage": 0}, r"model\.blocks_per_stage=0 .*\[1, inf\)"),
    ({"model.widths": (4, 0)}, r"model\.widths=\(4, 0\) .*a non-empty tuple of positive"),
    ({"model.meta_embed_dim": 0}, r"model\.meta_embed_dim=0 .*\[1, inf\)"),
    ({"model.meta_hidden_dim": 0}, r"model\.meta_hidden_dim=0 .*\[1, inf\)"),
    ({"model.meta_dropout": 1.0}, r"model\.meta_dropout=1\.0 .*a number in \[0, 1\)"),
    ({"eval.batch_size": 0}, r"eval\.batch_size=0 .*an integer in \[1, inf\)"),
    ({"checkpoint.keep": 0}, r"checkpoint\.keep=0 .*an integer in \[1, inf\)"),
    ({"log_every_steps": 0}, r"log_every_steps=0 .*an integer in \[1, inf\)"),
    ({"parallel.num_devices": -1}, r"parallel\.num_devices=-1 .*an integer in \[0, inf\]"),
    # 4 fake CPU devices: 3 does not divide the batches, 8 are not there.
    ({"parallel.num_devices": 3}, r"parallel\.num_devices=3 .*one of \[1, 2, 4\]"),
    ({"parallel.num_devices": 8}, r"parallel\.num_devices=8 .*4 devices available"),
]
# Fields no value of whose type is wrong: free text, and the choice of method (checked above).
FREE_FORM = {"data.data_dir"}


def config_leaves(config) -> dict[str, object]:
    """dotted name -> value of every field of a config."""
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update({f"{key}.{k}": v for k, v in config_leaves(value).items()})
        else:
            out[key] = value
    return out


def boolean_fields() -> list[str]:
    """Every field whose value is a bool or a bool placeholder (e.g. q_as_optimizer_delta)."""
    config = tiny()
    return sorted(
        name
        for name, value in config_leaves(config).items()
        if isinstance(value, bool) or name.endswith("q_as_optimizer_delta")
    )


def test_cifar_without_tensorflow_says_what_to_install(tmp_path, monkeypatch):
    """TensorFlow is an extra: a digits run needs none; CIFAR and tf_data say what is missing."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("tensorflow") else real(name, *a),
    )
    for overrides in ({"data.dataset": "cifar10"}, {"data.input": "tf_data"}):
        check_bad_input(
            overrides,
            r"needs tensorflow and tensorflow_datasets, not installed: pip install "
            r"'ebomlc_jax\[cifar\]'",
            tmp_path,
            monkeypatch,
        )
    validate.validate(tiny())  # digits on the device: nothing missing


def test_every_config_field_has_a_bad_input_test():
    """Here or in the tests of its method (every test module's BAD_INPUT counts)."""
    covered = {k for overrides, _ in all_bad_input_cases() for k in overrides}
    covered |= set(boolean_fields())
    missing = set(config_leaves(tiny())) - covered - FREE_FORM
    assert not missing, f"no bad-input case for {sorted(missing)}"


@pytest.mark.parametrize("overrides, message", BAD_INPUT, ids=case_ids(BAD_INPUT))
def test_bad_input_is_a_config_error_before_any_compute(overrides, message, tmp_path, monkeypatch):
    check_bad_input(overrides, message, tmp_path, monkeypatch)


@pytest.mark.parametrize("field", boolean_fields())
def test_a_boolean_field_refuses_anything_but_a_bool(field, tmp_path, monkeypatch):
    """ml_collections refuses other types on the command line; a config built in code (no type
    safety) reaches validate, which names the field."""
    no_compute(monkeypatch)
    config = ml_collections.ConfigDict(tiny().to_dict(), type_safe=False)
    *parents, last = field.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[last] = "yes"
    if parents[:1] == ["method"]:  # a method's field is checked when it runs
        config.method.name = parents[1]
    with pytest.raises(ConfigError, match=rf"{re.escape(field)}='yes' .*\(True, False\)"):
        train.train_and_evaluate(config, str(tmp_path))


def test_parallel_seeds_map_equals_vmap_end_to_end(tmp_path):
    """Two seeds in one program, batched (vmap) or in turn (map): the same per-seed results."""
    summaries = {}
    for how in ("vmap", "map"):
        overrides = {"num_epochs": 2, "num_parallel_seeds": 2, "parallel.num_devices": 1}
        config = tiny({**overrides, "parallel.seeds": how})
        config.figures = False
        train.train_and_evaluate(config, str(tmp_path / how))
        summaries[how] = [
            json.loads((tmp_path / how / f"seed_{s}" / "summary.json").read_text())
            for s in (config.seed, config.seed + 1)
        ]
    for a, b in zip(summaries["vmap"], summaries["map"], strict=True):
        for key in ("final_test_accuracy", "final_meta_correction_accuracy", "best_clean_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
