"""Analysis: run directories parse (resume duplicates, seed_<s>/), figures render, tables add up."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg

from ebomlc_jax.analysis import figures, runs

REPO = pathlib.Path(__file__).resolve().parents[1]


def _eval_line(step, epoch, acc, clean_loss, meta=True):
    line = {
        "step": step,
        "eval/epoch": epoch,
        "eval/test_accuracy": acc,
        "eval/clean_accuracy": acc + 0.05,
        "eval/clean_loss": clean_loss,
        "train_epoch/F": clean_loss + 0.1,
        "train_epoch/lr": 0.1,
    }
    if meta:
        line |= {"eval/meta_correction_accuracy": 0.7, "train_epoch/G": 2.0 - 0.1 * epoch}
    return line


def write_run(
    path,
    *,
    method="ebomlc",
    variant="paper",
    kind="uniform",
    rate=0.4,
    seed=0,
    dataset="cifar10",
    accs=(0.5, 0.6, 0.7),
    best=None,
    wall=100.0,
    counts=None,
    history=None,
    summary=True,
    resume=False,
    steps_per_epoch=10,
):
    """A run directory in train.py's format; with `resume`, epoch 2 onwards is logged twice.

    `history`: the lines of meta_confusion_history.jsonl (see history_line), written as given.
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = method != "ce"
    lines = []
    for e, acc in enumerate(accs, start=1):
        step = e * steps_per_epoch
        lines.append({"step": step - 5, "train/G": 2.0, "train/F": 1.0, "train/beta": 0.1})
        lines.append(_eval_line(step, e, acc if not resume else acc - 0.2, 1.0 / e, meta))
    if resume:
        # Killed after epoch 3, restarted from the epoch-1 checkpoint: epochs 2-3 are rewritten.
        for e, acc in enumerate(accs[1:], start=2):
            step = e * steps_per_epoch
            lines.append({"step": step - 5, "train/G": 3.0, "train/F": 1.0, "train/beta": 0.2})
            lines.append(_eval_line(step, e, acc, 1.0 / e, meta))
        # Epoch 1 is not rewritten, so it keeps its first value.
        lines[1]["eval/test_accuracy"] = accs[0]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if summary:
        best = accs[-1] if best is None else best
        (path / "summary.json").write_text(
            json.dumps(
                {
                    "method": method,
                    "variant": variant,
                    "dataset": dataset,
                    "noise_kind": kind,
                    "noise_rate": rate,
                    "seed": seed,
                    "final_test_accuracy": accs[-1],
                    "test_accuracy_at_best_clean": best,
                    "best_clean_epoch": len(accs),
                    "best_clean_accuracy": 0.9,
                    "wall_time_s": wall,
                    "steps_per_sec": 10.0,
                    "realised_noise_rate": rate,
                    "config": {},
                }
            )
        )
    if counts is not None:
        counts = np.asarray(counts)
        (path / "meta_confusion.json").write_text(
            json.dumps({"epoch": len(accs), "num_classes": len(counts), "counts": counts.tolist()})
        )
    if history is not None:
        (path / "meta_confusion_history.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in history)
        )
    return path


def history_line(epoch, mislabelled, correct, changed, changed_to_true):
    """One line of meta_confusion_history.jsonl, as train.py writes it."""
    mislabelled, correct = np.asarray(mislabelled), np.asarray(correct)
    return {
        "epoch": epoch,
        "num_classes": len(mislabelled),
        "mislabelled": mislabelled.tolist(),
        "correct": correct.tolist(),
        "changed": changed,
        "changed_to_true": changed_to_true,
    }


# Three classes, three epochs: a copier (epoch 1), then a meta model that starts to correct.
# Epoch 2: of 6 mislabelled examples, 2 corrected (diagonal), 4 left (changed 1 of them to a third
# wrong class, kept the given label on 3); of 10 correct ones, 8 kept, 2 changed: changed = 1 + 2
# + 2 corrected = 5, changed_to_true = 2.
HISTORY_COUNTS = [
    (1, [[0, 2, 0], [1, 0, 1], [1, 1, 0]], np.diag([4, 3, 3]), 0, 0),
    (2, [[1, 1, 0], [1, 0, 1], [0, 1, 1]], [[3, 1, 0], [0, 2, 1], [0, 0, 3]], 5, 2),
    (3, [[2, 0, 0], [0, 2, 0], [0, 1, 1]], [[4, 0, 0], [0, 3, 0], [0, 1, 2]], 6, 5),
]
HISTORY = [history_line(*row) for row in HISTORY_COUNTS]
EXPECTED_DIAGNOSTICS = {  # by hand from HISTORY_COUNTS
    "meta_accuracy_on_mislabelled": [0 / 6, 2 / 6, 5 / 6],
    "meta_accuracy_on_correct": [10 / 10, 8 / 10, 9 / 10],
    "meta_change_rate": [0 / 16, 5 / 16, 6 / 16],
    "meta_change_precision": [0.0, 2 / 5, 5 / 6],  # 0 when nothing changed
}


def test_load_run_epochs_and_last_duplicate_wins(tmp_path):
    run = runs.load_run(write_run(tmp_path / "r", accs=(0.5, 0.6, 0.7), resume=True))
    np.testing.assert_array_equal(run.epochs, [1, 2, 3])
    np.testing.assert_array_equal(run.steps, [10, 20, 30])
    # The resumed (later) lines win for epochs 2-3; the first write of epoch 1 stays.
    np.testing.assert_allclose(run.history["eval/test_accuracy"], [0.5, 0.6, 0.7])
    np.testing.assert_allclose(run.history["eval/clean_loss"], [1.0, 0.5, 1 / 3])
    np.testing.assert_allclose(run.history["train_epoch/G"], [1.9, 1.8, 1.7])
    assert "train/G" not in run.history and "eval/epoch" not in run.history
    steps, g = run.step_series["train/G"]
    np.testing.assert_array_equal(steps, [5, 15, 25])
    np.testing.assert_allclose(g, [2.0, 3.0, 3.0])
    assert run.label == "ebomlc/paper uniform-0.4 seed 0"
    assert run.finished and run.confusion is None


def test_epoch_missing_a_key_is_nan_and_curve_drops_it(tmp_path):
    path = write_run(tmp_path / "r", accs=(0.5, 0.6))
    with open(path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 30, "eval/epoch": 3, "eval/test_accuracy": 0.8}) + "\n")
    run = runs.load_run(path)
    assert np.isnan(run.history["eval/clean_loss"][2])
    epochs, values = run.curve("eval/clean_loss")
    np.testing.assert_array_equal(epochs, [1, 2])
    np.testing.assert_allclose(values, [1.0, 0.5])
    assert run.curve("eval/nothing")[0].size == 0


def test_find_runs_seed_layout_and_unfinished(tmp_path):
    for seed in (10, 2, 0):
        write_run(tmp_path / "exp" / f"seed_{seed}", seed=seed, summary=seed != 10)
    (tmp_path / "exp" / "plots").mkdir()
    found = runs.find_runs([tmp_path / "exp", tmp_path / "exp" / "seed_2"])
    assert [r.path.name for r in found] == ["seed_0", "seed_2", "seed_10"]
    assert found[1].label == "ebomlc/paper uniform-0.4 seed 2"
    assert found[2].label == "exp/seed_10 (unfinished)" and not found[2].finished


def test_missing_metrics_error_names_path(tmp_path):
    (tmp_path / "empty" / "seed_0").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"empty.*no metrics\.jsonl"):
        runs.load_run(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"empty: no metrics\.jsonl in it or in its subdir"):
        runs.find_runs([tmp_path / "empty"])
    with pytest.raises(ValueError, match="no such run directory"):
        runs.find_runs([tmp_path / "absent"])


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"step": 7, "eval/epoch": ', "malformed line, not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"eval/epoch": 1}', "'step' is None"),
        ('{"step": 3, "train/G": "high"}', "value of 'train/G' is 'high'"),
    ],
)
def test_malformed_line_error_gives_line_number(tmp_path, bad, message):
    path = write_run(tmp_path / "r", accs=(0.5,))  # 2 lines
    with open(path / "metrics.jsonl", "a") as f:
        f.write("\n" + bad + "\n" + json.dumps({"step": 99, "train/G": 1.0}) + "\n")
    with pytest.raises(ValueError, match=rf"metrics\.jsonl:4: .*{message}"):
        runs.load_run(path)


def test_truncated_last_line_of_a_killed_run_is_skipped(tmp_path):
    path = write_run(tmp_path / "r", accs=(0.5, 0.6), summary=False)
    with open(path / "metrics.jsonl", "a") as f:
        f.write('{"step": 25, "train/G": 1.')
    with pytest.warns(UserWarning, match=r"metrics\.jsonl:5: skipping a truncated last line"):
        run = runs.load_run(path)
    np.testing.assert_array_equal(run.epochs, [1, 2])


def test_heatmap_is_row_normalised(tmp_path):
    counts = [[8, 2, 0], [1, 1, 2], [0, 0, 0]]
    run = runs.load_run(write_run(tmp_path / "r", counts=counts))
    shown = figures.correction_heatmap(run, tmp_path / "h.png")
    np.testing.assert_allclose(shown, [[0.8, 0.2, 0.0], [0.25, 0.25, 0.5], [0.0, 0.0, 0.0]])
    assert run.correction_accuracy() == pytest.approx(9 / 14)
    assert run.confusion_epoch == 3
    assert mpimg.imread(tmp_path / "h.png").shape[0] > 200


def test_heatmap_without_confusion_raises(tmp_path):
    run = runs.load_run(write_run(tmp_path / "r", method="ce", variant=None))
    with pytest.raises(ValueError, match="no meta_confusion.json"):
        figures.correction_heatmap(run, tmp_path / "h.png")


def test_meta_diagnostics_conventions_and_leading_axes():
    copier = runs.meta_diagnostics(
        np.array([[0, 3], [2, 0]]), np.diag([5, 4]), changed=0, changed_to_true=0
    )
    assert {k: float(v) for k, v in copier.items()} == {
        "meta_accuracy_on_mislabelled": 0.0,
        "meta_accuracy_on_correct": 1.0,
        "meta_change_rate": 0.0,
        "meta_change_precision": 0.0,
    }
    # Noise rate 0: no mislabelled example, so that accuracy is undefined (NaN), not 0.
    clean = runs.meta_diagnostics(np.zeros((2, 2)), [[3, 1], [0, 4]], 1, 0)
    assert np.isnan(clean["meta_accuracy_on_mislabelled"])
    assert clean["meta_accuracy_on_correct"] == 7 / 8 and clean["meta_change_rate"] == 1 / 8
    assert clean["meta_change_precision"] == 0.0
    # Leading axes (epochs, seeds) are kept.
    stacked = runs.meta_diagnostics(
        np.stack([np.eye(2), [[0, 1], [1, 0]]]), np.stack([np.eye(2)] * 2), [2, 2], [2, 0]
    )
    np.testing.assert_allclose(stacked["meta_accuracy_on_mislabelled"], [1.0, 0.0])
    np.testing.assert_allclose(stacked["meta_change_precision"], [1.0, 0.0])


def test_confusion_history_last_line_of_an_epoch_wins(tmp_path):
    # A resume redid epochs 2-3: their first lines (all zeros but one) are superseded.
    stale = [history_line(e, np.eye(3), np.eye(3), 1, 1) for e in (2, 3)]
    path = write_run(tmp_path / "r", history=[HISTORY[0], *stale, *HISTORY[1:]])
    history = runs.load_run(path).confusion_history
    np.testing.assert_array_equal(history.epochs, [1, 2, 3])
    assert history.mislabelled.shape == history.correct.shape == (3, 3, 3)
    np.testing.assert_array_equal(history.mislabelled[1], HISTORY_COUNTS[1][1])
    np.testing.assert_array_equal(history.correct[2], HISTORY_COUNTS[2][2])
    np.testing.assert_array_equal(history.changed, [0, 5, 6])
    np.testing.assert_array_equal(history.changed_to_true, [0, 2, 5])
    for key, want in EXPECTED_DIAGNOSTICS.items():
        np.testing.assert_allclose(history.diagnostics()[key], want, err_msg=key)
    assert runs.load_run(write_run(tmp_path / "none")).confusion_history is None


def test_confusion_history_cut_and_bad_lines(tmp_path):
    path = write_run(tmp_path / "r", history=HISTORY[:2])
    with open(path / "meta_confusion_history.jsonl", "a") as f:
        f.write('{"epoch": 3, "num_classes": 3, "misla')
    with pytest.warns(UserWarning, match=r"history\.jsonl:3: skipping a truncated last line"):
        np.testing.assert_array_equal(runs.load_run(path).confusion_history.epochs, [1, 2])
    bad = dict(HISTORY[1], correct=[[1, 2], [3, 4]])
    write_run(path, history=[HISTORY[0], bad])
    with pytest.raises(ValueError, match=r"history\.jsonl:2: counts have shape \(2, 2\)"):
        runs.load_run(path)
    write_run(path, history=[HISTORY[0], dict(HISTORY[1], changed=-1)])
    with pytest.raises(ValueError, match=r"history\.jsonl:2: .*must be counts"):
        runs.load_run(path)
    write_run(path, history=[{k: v for k, v in HISTORY[0].items() if k != "changed"}])
    with pytest.raises(
        ValueError, match=r"history\.jsonl:1: malformed line, missing \['changed'\]"
    ):
        runs.load_run(path)


def test_group_heatmaps_and_diagnostics_figure(tmp_path):
    a = runs.load_run(write_run(tmp_path / "a", history=HISTORY))
    b = runs.load_run(write_run(tmp_path / "b", seed=1, history=HISTORY[:2]))
    mislabelled, correct = figures.group_heatmaps(a, tmp_path / "g.png")  # the last epoch
    np.testing.assert_allclose(mislabelled, [[1, 0, 0], [0, 1, 0], [0, 0.5, 0.5]])
    np.testing.assert_allclose(correct, [[1, 0, 0], [0, 1, 0], [0, 1 / 3, 2 / 3]])
    image = mpimg.imread(tmp_path / "g.png")
    assert image.shape[1] > 1.5 * image.shape[0] and image.std() > 0  # two panels side by side

    ce = runs.load_run(write_run(tmp_path / "ce", method="ce", variant=None))
    drawn = figures.diagnostics_figure([a, ce, b], tmp_path / "d.png")
    assert len(drawn) == 2  # a and b; ce has no meta model
    (epochs_a, values_a), (epochs_b, values_b) = drawn
    np.testing.assert_array_equal(epochs_a, [1, 2, 3])
    np.testing.assert_array_equal(epochs_b, [1, 2])
    for key, want in EXPECTED_DIAGNOSTICS.items():
        np.testing.assert_allclose(values_a[key], want, err_msg=key)
        np.testing.assert_allclose(values_b[key], want[:2], err_msg=key)
    assert mpimg.imread(tmp_path / "d.png").shape[0] > 300
    with pytest.raises(ValueError, match="no meta_confusion_history.jsonl"):
        figures.group_heatmaps(ce, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no run has a meta_confusion_history.jsonl"):
        figures.diagnostics_figure([ce], tmp_path / "x.png")


def test_figures_cli_writes_readable_pngs(tmp_path, capsys):
    a = write_run(tmp_path / "a", counts=np.eye(10) * 9 + 1)
    k100 = np.ones((100, 100))
    write_run(tmp_path / "b" / "seed_0", method="mlc_d", variant=None, counts=k100, history=[
        history_line(e, k100 - np.eye(100), 3 * np.eye(100), 9900, 100) for e in (1, 2, 3)
    ])  # fmt: skip
    ce = write_run(tmp_path / "c", method="ce", variant=None)
    assert figures.main([str(a), str(tmp_path / "b"), str(ce), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    expected = ["curves.png", "meta_diagnostics.png", "heatmap_ebomlc_paper_uniform-0.4_seed_0.png",
                "heatmap_mlc_d_uniform-0.4_seed_0.png",
                "heatmap_groups_mlc_d_uniform-0.4_seed_0.png"]  # fmt: skip
    assert printed == [str(tmp_path / "out" / name) for name in expected]
    for path in printed:
        image = mpimg.imread(path)
        assert image.shape[0] > 300 and image.shape[1] > 300 and image.std() > 0
    curves = mpimg.imread(printed[0])

    # Other data, other picture; default --out is the first run directory.
    write_run(a, accs=(0.2, 0.9, 0.3), counts=np.eye(10))
    assert figures.main([str(a), str(tmp_path / "b"), str(ce)]) == 0
    assert capsys.readouterr().out.split()[0] == str(a / "curves.png")
    changed = mpimg.imread(a / "curves.png")
    assert changed.shape != curves.shape or not np.array_equal(changed, curves)


def test_figures_cli_reports_bad_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        figures.main([str(tmp_path)])
    assert e.value.code == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


def test_cli_modules_run_without_jax(tmp_path):
    write_run(tmp_path / "exp" / "seed_0")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "t.md"
    cmd = [sys.executable, "-W", "error::RuntimeWarning", "-m", "ebomlc_jax.analysis.tables"]
    done = subprocess.run(
        [*cmd, str(tmp_path / "exp"), "--with-paper", "--out", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout == out.read_text() and "89.58" in done.stdout
    check = (
        "import sys, ebomlc_jax.analysis as a, matplotlib; a.report; a.training_curves; "
        "assert not {'jax', 'tensorflow'} & set(sys.modules), 'imported jax or tensorflow'; "
        "assert matplotlib.get_backend().lower() == 'agg', matplotlib.get_backend()"
    )
    subprocess.run([sys.executable, "-c", check], env=env, cwd=REPO, check=True)
