"""The Colab notebook: every cell runs on this CPU in quick mode, from this checkout (nbclient +
ipykernel), and shows the curves; its full-run command and every method it offers parse and
validate with the real flag parser."""

import json
import os
import pathlib
import re
import shlex

import nbformat
import pytest
from absl import flags
from ml_collections import config_flags
from nbclient import NotebookClient

from ebomlc_jax import methods, validate
from ebomlc_jax.cpu import xla

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab_quickstart.ipynb"


def test_every_cell_runs_in_quick_mode_from_the_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv("EBOMLC_CHECKOUT", str(ROOT))
    monkeypatch.setenv("EBOMLC_WORKDIRS", str(tmp_path))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    # One CPU device and XLA's default codegen, as on a Colab CPU runtime (not the suite's 4 fake
    # devices at -O0).
    monkeypatch.setenv("XLA_FLAGS", xla.with_cpu_flags(""))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()
    workdir = tmp_path / "digits_quick" / "ebomlc"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["dataset"] == "digits" and summary["config"]["num_epochs"] == 3
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs)
    assert "not on Colab" in text and "final test accuracy" in text, text[-3000:]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # Every figure of the run, inline: the curves, the correction heatmaps, the diagnostics.
    pngs = sorted(p.name for p in workdir.glob("*.png"))
    assert len(images) == len(pngs) and {"curves.png", "meta_diagnostics.png"} <= set(pngs)
    assert "| ebomlc/paper |" in text  # the table, in the paper's layout
    assert not [o for o in outputs if o.output_type == "error"]


def cell_sources() -> list[str]:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def offered_methods() -> list[str]:
    (line,) = [ln for ln in cell_sources()[0].splitlines() if ln.startswith("METHOD =")]
    return json.loads(re.search(r"@param (\[.*\])", line).group(1))


def test_it_offers_exactly_the_registered_methods():
    assert sorted(offered_methods()) == sorted(methods.REGISTRY)


@pytest.mark.parametrize("method", offered_methods())
def test_the_full_run_command_parses_and_validates(method, tmp_path, monkeypatch):
    """QUICK unticked: the CIFAR command, through the same flag parser as run.py."""
    settings, args_cell = cell_sources()[0], cell_sources()[3]
    assert "ARGS =" in args_cell
    namespace = {"os": os, "pathlib": pathlib, "IN_COLAB": False}
    exec(settings, namespace)
    namespace.update(QUICK=False, METHOD=method)
    exec(args_cell, namespace)
    argv = ["run.py", *shlex.split(namespace["ARGS"])]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
    monkeypatch.chdir(ROOT)
    values(argv)
    config = values.config
    assert config.method.name == method and config.data.download is True
    validate.validate(config)
