"""Ablation figures from hand-made run directories: grouping by config (a run differing in two
fields joins no group), seed bands, PNGs that read back, meta-model diagnostics, the CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import image as mpimg
from test_tables import REPO, write_run

from ebomlc_jax.analysis import ablations
from ebomlc_jax.analysis import runs as runs_lib

K, RHO, VARIANT = ablations.ABLATIONS[0], ablations.ABLATIONS[1], ablations.ABLATIONS[3]


def curves(acc, loss):
    """Three epochs of test accuracy and clean loss ending at `acc`, `loss`."""
    return {
        "eval/test_accuracy": [acc - 0.2, acc - 0.1, acc],
        "eval/clean_loss": [loss + 1.0, loss + 0.5, loss],
    }


def write_ablation_runs(root):
    """k in {1, 2, 5} (2 seeds each) at uniform-40%, k in {1, 2} at uniform-20%, rho=0.8 at k=1,
    one run with k=2 and rho=0.4 (two fields), a rerun of a seed, reference-variant runs and a CE
    run; accuracy 0.5 + k/20 + seed/100."""
    for rate, ks in ((0.4, (1, 2, 5)), (0.2, (1, 2))):
        for k in ks:
            for seed in (0, 1):
                acc = 0.5 + k / 20 + seed / 100
                write_run(root / "k" / f"u{rate}" / f"k{k}" / f"seed{seed}", rate=rate, seed=seed,
                          best=acc, curves=curves(acc, 1.0 / k),
                          config={"method.ebomlc.k": k})  # fmt: skip
    write_run(root / "rho" / "r08", best=0.3, curves=curves(0.3, 2.0),
              config={"method.ebomlc.rho": 0.8})  # fmt: skip
    write_run(root / "two" / "k2rho04", best=0.9, curves=curves(0.9, 0.1),
              config={"method.ebomlc.k": 2, "method.ebomlc.rho": 0.4})  # fmt: skip
    write_run(root / "zrerun" / "k5", best=0.01, curves=curves(0.01, 9.0),
              config={"method.ebomlc.k": 5})  # fmt: skip
    for seed in (0, 1):
        write_run(root / "variant" / f"ref{seed}", variant="reference", seed=seed, best=0.7,
                  curves=curves(0.7, 0.3),
                  config={"method.ebomlc.variant": "reference"})  # fmt: skip
    write_run(root / "ce", method="ce", variant=None, best=0.4, curves=curves(0.4, 1.0))


def test_groups_share_everything_but_the_ablated_field(tmp_path):
    write_ablation_runs(tmp_path)
    runs = runs_lib.find_runs([tmp_path])
    k_groups = ablations.ablation_groups(runs, K)
    assert [(g.setting, g.row, g.values) for g in k_groups] == [
        (("uniform", 0.2), "ebomlc/paper", (1, 2)),
        (("uniform", 0.4), "ebomlc/paper", (1, 2, 5)),
    ]
    u40 = dict(k_groups[1].members)
    # The k=2, rho=0.4 run differs in two fields: it is in no k group; the rerun of k=5 seed 0
    # counts once (the first found); the rho=0.8 and reference runs stay out.
    assert {k: sorted(r.path.relative_to(tmp_path).as_posix() for r in runs_) for k, runs_ in
            u40.items()} == {k: [f"k/u0.4/k{k}/seed0", f"k/u0.4/k{k}/seed1"]
                             for k in (1, 2, 5)}  # fmt: skip
    band = ablations.mean_curve(u40[5], "eval/test_accuracy", 100.0)
    np.testing.assert_allclose(band.mean, [75.5 - 20, 75.5 - 10, 75.5])
    np.testing.assert_allclose(band.std, [np.std([75, 76], ddof=1)] * 3)

    rho_groups = ablations.ablation_groups(runs, RHO)
    assert [(g.values, g.shared["method.ebomlc.k"]) for g in rho_groups] == [
        ((0.2, 0.8), 1),
        ((0.2, 0.4), 2),  # the two-field run pairs with the k=2 runs, which differ from it in rho
    ]
    (variant,) = ablations.ablation_groups(runs, VARIANT)
    assert (variant.row, variant.values) == ("ebomlc", ("paper", "reference"))
    assert [len(r) for _, r in variant.members] == [2, 2]


def test_mean_curve_over_runs_of_different_lengths(tmp_path):
    a = write_run(tmp_path / "a", curves={"eval/clean_loss": [1.0, 2.0, 3.0]})
    b = write_run(tmp_path / "b", curves={"eval/clean_loss": [3.0, 4.0]})
    band = ablations.mean_curve(runs_lib.find_runs([a, b]), "eval/clean_loss")
    np.testing.assert_array_equal(band.epochs, [1, 2, 3])
    np.testing.assert_allclose(band.mean, [2.0, 3.0, 3.0])
    np.testing.assert_allclose(band.std, [np.sqrt(2), np.sqrt(2), 0.0])
    np.testing.assert_array_equal(band.n, [2, 2, 1])
    assert ablations.mean_curve([], "eval/clean_loss").epochs.size == 0


def test_cli_writes_readable_pngs_and_describes_them(tmp_path, capsys):
    write_ablation_runs(tmp_path / "runs")
    diag = {"eval/meta_accuracy_on_mislabelled": [0.1, 0.2, 0.3],
            "eval/meta_change_rate": [0.0, 0.1, 0.2], **curves(0.6, 0.5)}  # fmt: skip
    for seed in (0, 1):
        write_run(tmp_path / "runs" / "mlc" / f"s{seed}", method="mlc", variant=None, seed=seed,
                  curves=diag)  # fmt: skip
    out = tmp_path / "out"
    assert ablations.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split(": ", 1)[0] for line in lines]
    assert names == [str(out / n) for n in (
        "k_cifar10_uniform20.png", "k_cifar10_uniform40.png", "rho_cifar10_uniform40.png",
        "rho_cifar10_uniform40_2.png", "variant_cifar10_uniform40.png",
        "curves_cifar10_uniform20.png", "curves_cifar10_uniform40.png",
        "meta_diagnostics_cifar10_uniform40.png")]  # fmt: skip
    assert lines[1].endswith("ebomlc/paper, cifar10 uniform-40%; k in 1, 2, 5")
    assert lines[2].endswith("rho in 0.2, 0.8; k=1") and lines[3].endswith("rho in 0.2, 0.4; k=2")
    # Every row of a setting in its learning curves; only the meta-model method in diagnostics.
    assert lines[6].startswith(f"{names[6]}: learning curves, cifar10 uniform-40%; rows: ")
    assert "mlc" in lines[6].split("rows: ")[1].split(", ")
    assert "ebomlc/paper (k=2)" in lines[6].split("rows: ")[1].split(", ")
    assert lines[7].endswith("rows: mlc")
    images = [mpimg.imread(name) for name in names]
    for image in images[:5]:
        assert image.shape == (432, 1530, 4) and image.std() > 0.05
    for image in images[5:7]:  # two panels
        assert image.shape == (382, 1080, 4) and image.std() > 0.05
    assert images[7].shape == (765, 1080, 4) and images[7].std() > 0.05  # four panels
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[5], images[6])


def test_no_groups_says_so(tmp_path, capsys):
    write_run(tmp_path / "r", curves={"eval/clean_accuracy": [0.5]})  # no curve of any figure
    assert ablations.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == (
        "no ablation groups, learning curves or meta-model diagnostics in 1 runs\n"
    )
    assert list((tmp_path / "out").iterdir()) == []
    write_run(tmp_path / "s", seed=1)  # a run with curves: its learning curves alone
    assert ablations.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "curves_cifar10_uniform40.png"
    assert capsys.readouterr().out.startswith(f"{out}: learning curves, cifar10 uniform-40%")
    assert list((tmp_path / "out").iterdir()) == [out]


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required: --out"),
        (["--out"], "argument --out: expected one argument"),
        (["--out", "x", "--k"], "unrecognized arguments: --k"),
    ],
)
def test_cli_bad_arguments_give_one_line(tmp_path, capsys, argv, message):
    write_run(tmp_path / "r")
    with pytest.raises(SystemExit) as e:
        ablations.main([str(tmp_path), *argv])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"python -m ebomlc_jax.analysis.ablations: error: {message}\n"


def test_cli_bad_root_gives_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        ablations.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert capsys.readouterr().err == (
        f"python -m ebomlc_jax.analysis.ablations: error: {tmp_path / 'empty'}: "
        "no metrics.jsonl in it or in its subdirectories\n"
    )


def test_clis_run_without_jax(tmp_path):
    write_ablation_runs(tmp_path / "runs")
    check = (
        "import sys; from ebomlc_jax.analysis import ablations, tables; "
        f"tables.main([{str(tmp_path / 'runs')!r}, '--compare', '--paired-against', 'ce']); "
        f"ablations.main([{str(tmp_path / 'runs')!r}, '--out', {str(tmp_path / 'out')!r}]); "
        "import ebomlc_jax.analysis as a; "
        "assert a.report is tables.report and a.write_ablation_figures is "
        "ablations.write_ablation_figures; "
        "assert not {'jax', 'tensorflow'} & set(sys.modules), 'imported jax or tensorflow'"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", check],
        env=env, cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "k_cifar10_uniform40.png" in done.stdout and "paired difference from ce" in done.stdout
