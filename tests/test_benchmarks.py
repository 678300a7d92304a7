"""The benchmark commands run and write their JSON (CE on ResNet-32, a few steps): a GPU
session runs them as they are, so a broken script would cost device time."""

import json

import pytest

from benchmarks import common, epoch_time, full_run, step_time


@pytest.fixture(autouse=True)
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    return tmp_path


def test_step_time_writes_its_table(results, capsys):
    assert step_time.main(["--methods", "ce", "--repeats", "2", "--warmup", "0", "--tag", "t"]) == 0
    record = json.loads((results / "step_time_t_k10.json").read_text())
    (row,) = record["rows"]
    assert row["method"] == "ce" and row["repeats"] == 2
    assert 0 < row["min_s"] <= row["median_s"] and row["ratio_to_ce"] == 1.0
    assert row["images_per_s"] == pytest.approx(200 / row["median_s"])
    assert row["compile_s"] > 0 and row["peak_memory_bytes_so_far"] > 0
    assert {"jax", "device", "cpu", "date"} <= set(record["machine"]), record["machine"]
    assert "ce " in capsys.readouterr().out


def test_epoch_time_compares_scan_and_loop(results):
    argv = ["--method", "ce", "--num-classes", "10", "--steps", "2", "--tag", "t"]
    assert epoch_time.main(argv) == 0
    record = json.loads((results / "epoch_time_t_ce.json").read_text())
    assert [r["mode"] for r in record["rows"]] == ["scan", "loop"]
    for r in record["rows"]:
        assert r["steps_per_epoch"] == 2 and r["epoch_s"] > 0
        assert r["steps_per_s"] == pytest.approx(2 / r["epoch_s"])


def test_full_run_trains_evaluates_checkpoints_and_extrapolates(results):
    argv = ["--method", "ce", "--num-classes", "10", "--epochs", "2", "--steps", "2"]
    assert full_run.main([*argv, "--test-images", "200", "--tag", "t"]) == 0
    record = json.loads((results / "full_run_t_ce_k10_s1_e2.json").read_text())
    assert record["steps_per_epoch"] == 2 and record["args"]["checkpoint"] == 1
    first, steady = record["first_epoch_s"], record["steady_epoch_s"]
    assert 0 < steady and record["extrapolated_120_epochs_s"] == pytest.approx(first + 119 * steady)
    assert record["train_and_eval_s"] >= first + steady
