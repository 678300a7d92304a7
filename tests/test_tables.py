"""Tables I-II from hand-made run directories: cells, marks and ties, ranks, time ratios, LaTeX,
the paper comparison, paired differences against scipy, config-split rows and the CLI."""

import ast
import json
import pathlib
import re

import numpy as np
import pytest
from scipy import stats

from ebomlc_jax.analysis import cells, paper, tables
from ebomlc_jax.analysis import runs as runs_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_config(method, kind, rate, seed, dataset, overrides):
    """A summary's `config` block as train.py writes it (the fields the analysis reads)."""
    config = {
        "seed": seed,
        "num_epochs": 3,
        "data": {"dataset": dataset, "clean_fraction": 0.02, "data_dir": "", "input": "device"},
        "noise": {"kind": kind, "rate": rate},
        "parallel": {"mode": "jit", "num_devices": 0},
        "figures": True,
        "method": {
            "name": method,
            "ce": {"train_on": "both"},
            "ebomlc": {"variant": "paper", "rho": 0.2, "xi": 0.5, "k": 1},
            "mlc": {"clean_in_lower_loss": True},
        },
    }
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[last] = value
    return config


def write_run(
    path,
    *,
    method="ebomlc",
    variant="paper",
    kind="uniform",
    rate=0.4,
    seed=0,
    dataset="cifar10",
    best=0.5,
    wall=100.0,
    curves=None,
    config=None,
    extra=None,
):
    """A finished run directory: summary.json and metrics.jsonl (`curves`: key -> per-epoch;
    `extra`: more summary.json values)."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    curves = curves or {"eval/test_accuracy": [best], "eval/clean_loss": [1.0]}
    num_epochs = len(next(iter(curves.values())))
    lines = [
        {"step": 10 * e, "eval/epoch": e, **{k: v[e - 1] for k, v in curves.items()}}
        for e in range(1, num_epochs + 1)
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    summary = {
        "method": method,
        "variant": variant,
        "dataset": dataset,
        "noise_kind": kind,
        "noise_rate": rate,
        "seed": seed,
        "final_test_accuracy": best,
        "test_accuracy_at_best_clean": best,
        "best_clean_epoch": num_epochs,
        "wall_time_s": wall,
        "steps_per_sec": 10.0,
        "config": run_config(method, kind, rate, seed, dataset, config or {}),
        **(extra or {}),
    }
    (path / "summary.json").write_text(json.dumps(summary))
    return path


# (row, method, variant, config overrides) -> {setting: [(seed, accuracy %, wall s), ...]}
U20, U40, F20 = ("uniform", 0.2), ("uniform", 0.4), ("flip", 0.2)
GRID = {
    ("ce", "ce", None, ()): {
        U20: [(0, 90, 50), (1, 92, 50)],
        U40: [(0, 85, 40)],
        F20: [(0, 88, 60)],
    },
    ("ce/noisy", "ce", "noisy", (("method.ce.train_on", "noisy"),)): {
        U20: [(0, 89, 30)],
        U40: [(0, 80, 20), (1, 82, 40)],
    },
    ("mlc", "mlc", None, ()): {
        U20: [(0, 91, 300)],
        U40: [(0, 86, 300), (1, 88, 300), (2, 87, 300)],
        F20: [(0, 90, 300)],
    },
    ("ebomlc/paper", "ebomlc", "paper", ()): {
        U20: [(0, 93, 100), (1, 95, 120)],
        U40: [(0, 87, 200)],
        F20: [(0, 89, 150)],
    },
    ("ebomlc/paper (rho=0.8)", "ebomlc", "paper", (("method.ebomlc.rho", 0.8),)): {
        U40: [(0, 50, 400)]
    },
}


def write_grid(root):
    """GRID's runs in the sweep's layout, a rerun of one seed, and a digits run."""
    for (row, method, variant, overrides), by_setting in GRID.items():
        for (kind, rate), runs in by_setting.items():
            for seed, acc, wall in runs:
                write_run(
                    root / "table" / f"{kind}{rate}" / re.sub(r"\W+", "_", row) / f"seed{seed}",
                    method=method,
                    variant=variant,
                    kind=kind,
                    rate=rate,
                    seed=seed,
                    best=acc / 100,
                    wall=wall,
                    config=dict(overrides),
                )
    # The same ce run again (another family's directory): its seed must count once.
    write_run(root / "zrerun" / "ce", method="ce", variant=None, rate=0.2, seed=0, best=0.1)
    write_run(root / "digits" / "e", dataset="digits", rate=0.6, best=0.7, wall=5.0)


def markdown_rows(text, title):
    """{row name: [cells]} of the Markdown table under `title`."""
    lines = text.splitlines()
    start = lines.index(f"### {title}") + 2
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split(" | ")]
        if not cells[0].startswith(":--"):
            rows[cells[0]] = cells[1:]
    return rows


C10 = "cifar10 (paper Table I): test accuracy (%) at the best clean-set epoch"
# Column positions in the CIFAR tables: the paper's 7 settings, Avg. Rank, time.
COL = {U20: 1, U40: 2, F20: 5, "rank": 7, "time": 8}


def test_cells_marks_ties_ranks_and_time(tmp_path):
    write_grid(tmp_path)
    text = tables.report(runs_lib.find_runs([tmp_path]))
    rows = markdown_rows(text, C10)
    assert list(rows) == ["Method", "ce", "ce/noisy", "mlc", "ebomlc/paper",
                          "ebomlc/paper (rho=0.8)"]  # fmt: skip
    assert rows["Method"] == ["uniform-0%", "uniform-20%", "uniform-40%", "uniform-60%",
                              "uniform-80%", "flip-20%", "flip-40%", "Avg. Rank",
                              "Training Time (× ebomlc/paper)"]  # fmt: skip
    std2 = f"{np.std([90, 92], ddof=1):.2f}"  # 1.41, also of [93, 95]
    # uniform-20%: ebomlc 94 best; ce and mlc tie at 91.00, both second; ce/noisy 89.
    assert rows["ebomlc/paper"][COL[U20]] == f"**94.00 ± {std2}** (n=2)"
    assert rows["ce"][COL[U20]] == f"<u>91.00 ± {std2}</u> (n=2)"
    assert rows["mlc"][COL[U20]] == "<u>91.00</u> (n=1)"
    assert rows["ce/noisy"][COL[U20]] == "89.00 (n=1)"
    # uniform-40%: mlc (86, 88, 87) and ebomlc tie at 87.00, both best; ce second.
    assert rows["mlc"][COL[U40]] == "**87.00 ± 1.00** (n=3)"
    assert rows["ebomlc/paper"][COL[U40]] == "**87.00** (n=1)"
    assert rows["ce"][COL[U40]] == "<u>85.00</u> (n=1)"
    assert rows["ce/noisy"][COL[U40]] == f"81.00 ± {std2} (n=2)"
    assert rows["ebomlc/paper (rho=0.8)"][COL[U40]] == "50.00 (n=1)"
    assert rows["ce/noisy"][COL[F20]] == "–" and rows["mlc"][0] == "–"
    # Ranks by hand (ties share the mean rank; missing cells skipped):
    # u20: ebomlc 1, ce 2.5, mlc 2.5, noisy 4; u40: mlc 1.5, ebomlc 1.5, ce 3, noisy 4, rho 5;
    # f20: mlc 1, ebomlc 2, ce 3.
    ranks = {r: rows[r][COL["rank"]] for r in rows if r != "Method"}
    assert ranks == {"ce": f"{8.5 / 3:.2f}", "ce/noisy": "4.00 (2/3)", "mlc": f"{5 / 3:.2f}",
                     "ebomlc/paper": "1.50", "ebomlc/paper (rho=0.8)": "5.00 (1/3)"}  # fmt: skip
    # Time over the settings shared with ebomlc/paper (per-setting means 110, 200, 150).
    times = {r: rows[r][COL["time"]] for r in rows if r != "Method"}
    assert times == {"ce": f"{50 / (460 / 3):.2f}×", "ce/noisy": f"{30 / 155:.2f}×",
                     "mlc": f"{300 / (460 / 3):.2f}×", "ebomlc/paper": "1.00×",
                     "ebomlc/paper (rho=0.8)": "2.00×"}  # fmt: skip
    assert "zrerun/ce (same row, setting and seed as" in text and "counted once" in text
    digits = markdown_rows(text, "digits: test accuracy (%) at the best clean-set epoch")
    assert digits["Method"] == ["uniform-60%", "Avg. Rank", "Training Time (× ebomlc/paper)"]
    assert digits["ebomlc/paper"] == ["70.00 (n=1)", "1.00", "1.00×"]
    assert "reference row: ebomlc/paper" in text


def test_column_ranks_and_marks_of_ties():
    values = {"a": 3.0, "b": 3.0, "c": 2.0, "d": 1.0, "e": 1.0}
    assert tables.column_ranks(values) == {"a": 1.5, "b": 1.5, "c": 3.0, "d": 4.5, "e": 4.5}
    assert tables.column_marks(values) == {"a": "best", "b": "best", "c": "second"}
    assert tables.column_marks({"a": 1.0, "b": 1.0}) == {"a": "best", "b": "best"}
    assert tables.column_marks({"a": 1.0}) == {}
    assert tables.average_ranks([{"a": 2.0, "b": 1.0}, {"a": 5.0}]) == {"a": (1.0, 2),
                                                                       "b": (2.0, 1)}  # fmt: skip


def test_ranks_recomputed_from_the_paper_match_its_avg_rank_column():
    printed = {
        "cifar10": (7.43, 4.43, 3.00, 6.57, 6.86, 4.29, 3.14, 8.00, 1.29),
        "cifar100": (7.57, 4.43, 2.57, 5.71, 5.14, 3.43, 5.86, 8.71, 1.57),
    }
    for dataset, column in printed.items():
        ranks = tables.paper_ranks(dataset)
        assert [round(ranks[m], 2) for m in paper.PAPER_RESULTS[dataset]] == list(column)


def latex_table(text, caption):
    """[[cells]] of the header and body of the tabular under `caption`."""
    lines = text.splitlines()
    start = lines.index(rf"\caption{{{caption}}}")
    body_start = lines.index(r"\toprule", start) + 1
    end = lines.index(r"\bottomrule", start)
    rows = [line for line in lines[body_start:end] if line != r"\midrule"]
    assert all(line.endswith(r" \\") for line in rows)
    return [line[: -len(r" \\")].split(" & ") for line in rows]


def test_latex_parses_with_escapes_marks_and_balanced_groups(tmp_path):
    write_grid(tmp_path)
    write_run(tmp_path / "mlcd", method="mlc_d", variant=None, rate=0.2, best=0.6)
    text = tables.report(runs_lib.find_runs([tmp_path]), fmt="latex", with_paper=True)
    caption = r"cifar10 (paper Table I): test accuracy (\%) at the best clean-set epoch"
    rows = latex_table(text, caption)
    assert rows[0][:3] == ["Method", r"uniform-0\%", r"uniform-20\%"]
    assert rows[0][-1] == r"Training Time ($\times$ ebomlc/paper)"
    assert all(len(r) == 10 for r in rows)
    by_name = {r[0]: r[1:] for r in rows}
    std2 = f"{np.std([90, 92], ddof=1):.2f}"
    assert (
        by_name["ebomlc/paper"][COL[U20]] == rf"\textbf{{94.00 $\pm$ {std2}}} {{\scriptsize (n=2)}}"
    )
    assert by_name["mlc"][COL[U20]] == r"\underline{91.00} {\scriptsize (n=1)}"
    assert by_name["ce/noisy"][COL[F20]] == "--"
    assert by_name[r"mlc\_d"][COL[U20]] == r"60.00 {\scriptsize (n=1)}"
    assert by_name[r"\textit{EBOMLC (paper, Table I)}"] == ["92.92", "92.18", "89.58", "83.51",
                                                            "76.02", "90.74", "90.54", "1.29",
                                                            r"1.00$\times$"]  # fmt: skip
    code = [line for line in text.splitlines() if not line.startswith("%")]
    joined = "\n".join(code)
    assert not re.search(r"(?<!\\)[%_&#]", joined.replace(" & ", " ")), "unescaped character"
    assert "±" not in joined and "×" not in joined and "–" not in joined
    unescaped = re.sub(r"\\[{}]", "", joined)
    assert unescaped.count("{") == unescaped.count("}")
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", joined):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack.pop() == env
    assert not stack and joined.count(r"\begin{tabular}") == 2


def test_comparison_with_the_paper(tmp_path):
    write_grid(tmp_path)
    text = tables.report(runs_lib.find_runs([tmp_path]), compare=True)
    rows = markdown_rows(text, "cifar10 (paper Table I): ours / paper (ours - paper), "
                               "test accuracy (%)")  # fmt: skip
    assert list(rows) == ["Method", "mlc", "ebomlc/paper"]  # no CE, no config-split rows
    assert rows["ebomlc/paper"] == ["– / 92.92", "94.00 / 92.18 (+1.82)", "87.00 / 89.58 (-2.58)",
                                    "– / 83.51", "– / 76.02", "89.00 / 90.74 (-1.74)",
                                    "– / 90.54", f"{(1.82 - 2.58 - 1.74) / 3:+.2f} (3/7)",
                                    "1.00× / 1.00×"]  # fmt: skip
    assert rows["mlc"][1:3] == ["91.00 / 89.01 (+1.99)", "87.00 / 86.08 (+0.92)"]
    assert rows["mlc"][-1] == f"{300 / (460 / 3):.2f}× / 2.28×"
    assert "No paper numbers for digits" in text


def write_paired(root):
    """Digits runs: ce (both) and ce/noisy on seeds 0-2, ebomlc on 0-3, mlc on seed 1 only."""
    accs = {
        ("ce", None, ()): [50, 60, 55],
        ("ce", "noisy", (("method.ce.train_on", "noisy"),)): [40, 45, 41],
        ("ebomlc", "paper", ()): [58, 61, 60, 99],
    }
    for (method, variant, overrides), values in accs.items():
        for seed, acc in enumerate(values):
            write_run(root / f"{method}-{variant}" / f"seed{seed}", method=method, variant=variant,
                      dataset="digits", rate=0.6, seed=seed, best=acc / 100,
                      config=dict(overrides))  # fmt: skip
    write_run(root / "mlc" / "seed1", method="mlc", variant=None, dataset="digits", rate=0.6,
              seed=1, best=0.7)  # fmt: skip


def test_paired_differences_and_t_interval(tmp_path):
    write_paired(tmp_path)
    items, _ = cells.entries(runs_lib.find_runs([tmp_path]))
    pairs = {p.row: p for p in tables.paired_differences(items, "ce")["digits"]}
    assert set(pairs) == {"ce/noisy", "mlc", "ebomlc/paper"}
    ebomlc = pairs["ebomlc/paper"]
    assert ebomlc.seeds == (0, 1, 2)  # seed 3 has no ce run
    np.testing.assert_allclose(ebomlc.differences, [8, 1, 5], atol=1e-9)
    expected = stats.ttest_rel([58, 61, 60], [50, 60, 55]).confidence_interval(0.95)
    np.testing.assert_allclose(ebomlc.interval(), (expected.low, expected.high), rtol=1e-9)
    half = stats.t.ppf(0.975, 2) * np.std([8, 1, 5], ddof=1) / np.sqrt(3)
    np.testing.assert_allclose(ebomlc.interval(), (14 / 3 - half, 14 / 3 + half), rtol=1e-9)
    np.testing.assert_allclose(pairs["ce/noisy"].differences, [-10, -15, -14], atol=1e-9)
    assert pairs["mlc"].n == 1 and pairs["mlc"].interval() is None

    text = tables.report(runs_lib.find_runs([tmp_path]), paired_against="ce")
    rows = markdown_rows(text, "digits: paired difference from ce (points)")
    assert rows["Method"] == ["uniform-60%"]
    assert rows["ebomlc/paper"] == [f"+4.67 [{expected.low:+.2f}, {expected.high:+.2f}] (n=3)"]
    assert rows["mlc"] == ["+10.00 (n=1)"]
    assert "nan" not in text.lower()
    with pytest.raises(tables.UnknownRow, match="rows present: ce, ce/noisy, mlc, ebomlc/paper"):
        tables.paired_differences(items, "dividemix")


def test_config_split_rows_name_their_fields_and_a_two_field_run_stays_apart(tmp_path):
    for seed in (0, 1):
        for rate in (0.2, 0.4):
            write_run(tmp_path / f"main{rate}-{seed}", rate=rate, seed=seed)
    write_run(tmp_path / "k2", config={"method.ebomlc.k": 2})
    write_run(tmp_path / "k2rho", config={"method.ebomlc.k": 2, "method.ebomlc.rho": 0.4})
    write_run(tmp_path / "long", config={"num_epochs": 120, "parallel.mode": "pmap"})
    items, _ = cells.entries(runs_lib.find_runs([tmp_path]))
    assert sorted({e.row for e in items}) == ["ebomlc/paper", "ebomlc/paper (k=2)",
                                              "ebomlc/paper (k=2, rho=0.4)",
                                              "ebomlc/paper (num_epochs=120)"]  # fmt: skip
    assert sum(e.main for e in items) == 4


def test_find_runs_walks_the_sweep_layout_in_natural_order(tmp_path):
    for seed in (10, 2):
        write_run(tmp_path / "table" / "uniform40" / "ebomlc" / f"seed{seed}", seed=seed)
    write_run(tmp_path / "table" / "uniform40" / "ebomlc" / "seed2" / "checkpoints" / "x")
    found = runs_lib.find_runs([tmp_path, tmp_path / "table"])
    names = [r.path.relative_to(tmp_path).as_posix() for r in found]
    assert names == ["table/uniform40/ebomlc/seed2", "table/uniform40/ebomlc/seed2/checkpoints/x",
                     "table/uniform40/ebomlc/seed10"]  # fmt: skip
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no metrics.jsonl in it or in its subdirectories"):
        runs_lib.find_runs([tmp_path / "empty"])


def test_ignored_fields_cover_the_training_loops_setup_only_fields():
    tree = ast.parse((REPO / "ebomlc_jax" / "train.py").read_text())
    setup_only = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "SETUP_ONLY"
    )
    assert all(cells.is_ignored(field) for field in setup_only)
    assert not cells.is_ignored("num_epochs") and not cells.is_ignored("method.ebomlc.rho")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--format", "html"], "argument --format: invalid choice: 'html' "
                               "(choose from 'markdown', 'latex')"),
        (["--paired-against", "nope"], "--paired-against=nope: no finished runs of row 'nope'; "
                                       "rows present: ebomlc/paper"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--metric", "nope"], "argument --metric: invalid choice: 'nope' (choose from "
                               "'test_accuracy_at_best_clean', 'final_test_accuracy', "
                               "'final_meta_accuracy_on_mislabelled', "
                               "'final_meta_accuracy_on_correct', 'final_meta_change_rate', "
                               "'final_meta_change_precision')"),
        (["--metric", "final_meta_change_rate", "--compare"],
         "--metric=final_meta_change_rate: --with-paper and --compare need a test accuracy, one "
         "of test_accuracy_at_best_clean, final_test_accuracy"),
    ],
)  # fmt: skip
def test_cli_bad_arguments_give_one_line(tmp_path, capsys, argv, message):
    write_run(tmp_path / "r")
    with pytest.raises(SystemExit) as e:
        tables.main([str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err == f"python -m ebomlc_jax.analysis.tables: error: {message}\n"


def test_cli_missing_directory_gives_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tables.main([str(tmp_path / "absent")])
    prog = "python -m ebomlc_jax.analysis.tables"
    err = capsys.readouterr().err
    assert err == f"{prog}: error: {tmp_path / 'absent'}: no such run directory\n"


def test_cli_writes_latex_with_every_section(tmp_path, capsys):
    write_grid(tmp_path / "runs")
    write_paired(tmp_path / "runs" / "paired")
    out = tmp_path / "t.tex"
    argv = [str(tmp_path / "runs"), "--format", "latex", "--compare", "--paired-against", "ce"]
    assert tables.main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    captions = re.findall(r"\\caption\{(.*)\}", printed)
    assert captions == [
        r"cifar10 (paper Table I): test accuracy (\%) at the best clean-set epoch",
        r"digits: test accuracy (\%) at the best clean-set epoch",
        r"cifar10 (paper Table I): ours / paper (ours - paper), test accuracy (\%)",
        "cifar10 (paper Table I): paired difference from ce (points)",
        "digits: paired difference from ce (points)",
    ]


def test_metric_tables_show_that_summary_value_and_leave_out_runs_without_it(tmp_path, capsys):
    # A copier's meta model (0% on the mislabelled), one that corrects half; CE has no meta model.
    for seed, (mislabelled, final) in enumerate([(0.0, 0.70), (0.5, 0.80)]):
        write_run(tmp_path / f"ebomlc{seed}", seed=seed, best=0.9,
                  extra={"final_meta_accuracy_on_mislabelled": mislabelled,
                         "final_test_accuracy": final})  # fmt: skip
        write_run(tmp_path / f"ce{seed}", method="ce", variant=None, seed=seed, best=0.8,
                  extra={"final_meta_accuracy_on_mislabelled": None,
                         "final_test_accuracy": 0.75})  # fmt: skip
    runs = runs_lib.find_runs([tmp_path])
    metric = "final_meta_accuracy_on_mislabelled"
    text = tables.report(runs, metric=metric)
    rows = markdown_rows(text, f"cifar10 (paper Table I): {paper.METRICS[metric]}")
    assert rows["ebomlc/paper"][COL[U40]] == f"25.00 ± {np.std([0, 50], ddof=1):.2f} (n=2)"
    assert "ce" not in rows
    assert f"{tmp_path / 'ce0'} (summary.json has no {metric})" in text
    assert f"- Cells: {metric} (" in text
    final = tables.report(runs, metric="final_test_accuracy", paired_against="ce")
    rows = markdown_rows(final, "cifar10 (paper Table I): test accuracy (%) after the last epoch")
    assert rows["ebomlc/paper"][COL[U40]] == f"**75.00 ± {np.std([70, 80], ddof=1):.2f}** (n=2)"
    paired = markdown_rows(final, "cifar10 (paper Table I): paired difference from ce (points)")
    half = stats.t.ppf(0.975, 1) * np.std([-5, 5], ddof=1) / np.sqrt(2)
    assert paired["ebomlc/paper"][0] == f"+0.00 [{-half:+.2f}, {half:+.2f}] (n=2)"
    assert "Paired: row - ce of final_test_accuracy" in final
    with pytest.raises(ValueError, match="allow only"):
        tables.report(runs, metric=metric, with_paper=True)
    assert tables.main([str(tmp_path), "--metric", metric]) == 0
    assert capsys.readouterr().out == text
