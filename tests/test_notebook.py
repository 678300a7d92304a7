"""The Colab notebook's commands name files, config fields, modules and flags that exist, and
its accelerator wheels pin the jax of requirements.txt (Colab itself is not run here)."""

import ast
import importlib
import importlib.util
import json
import pathlib
import re
import shlex

import pytest

from ebomlc_jax import validate

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "colab_quickstart.ipynb"


def shell_commands() -> list[list[str]]:
    """The notebook's `!` lines (continuations joined), split like a shell would."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    code = code.replace("\\\n", " ")
    return [shlex.split(line.strip()[1:]) for line in code.splitlines() if line.strip()[:1] == "!"]


def commands(*prefix: str) -> list[list[str]]:
    """The notebook's shell commands that start with `prefix`."""
    return [c for c in shell_commands() if c[: len(prefix)] == list(prefix)]


def pinned_jax(text: str) -> str:
    return re.search(r"^jax(?:\[\w+\])?==([\d.]+)", text, re.M).group(1)


def literal(value: str):
    """A command-line value as ml_collections' flags would read it (numbers, booleans, text)."""
    return ast.literal_eval(value) if value[:1].isdigit() or value in ("True", "False") else value


def test_run_commands_name_a_config_and_real_fields():
    runs = commands("python", "run.py")
    assert runs
    for cmd in runs:
        (path,) = [a.split("=", 1)[1] for a in cmd if a.startswith("--config=")]
        spec = importlib.util.spec_from_file_location("notebook_config", ROOT / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config()
        for arg in cmd:
            if arg.startswith("--config."):
                field, value = arg[len("--config.") :].split("=", 1)
                *parents, last = field.split(".")
                node = config
                for p in parents:
                    node = node[p]
                assert last in node, f"{field} is not a config field"
                node[last] = literal(value)
        validate.validate(config)


def test_module_commands_exist_and_take_their_flags(capsys):
    modules = commands("python", "-m")
    workdirs = workdirs_of_runs()
    assert modules and workdirs
    for cmd in modules:
        main = importlib.import_module(cmd[2]).main
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0
        usage = capsys.readouterr().out
        for flag in (a.split("=")[0] for a in cmd[3:] if a.startswith("--")):
            assert flag in usage, f"{cmd[2]} has no {flag}"
        # They read the directory that run.py wrote.
        assert [a for a in cmd[3:] if not a.startswith("--")] == workdirs


def workdirs_of_runs() -> list[str]:
    runs = commands("python", "run.py")
    return [a.split("=", 1)[1] for c in runs for a in c if a.startswith("--workdir=")]


def test_accelerator_wheels_pin_the_jax_of_requirements():
    jax_version = pinned_jax((ROOT / "requirements.txt").read_text())
    assert pinned_jax((ROOT / "requirements-cuda.txt").read_text()) == jax_version
    tpu = [c for c in shell_commands() if any(a.startswith("jax[tpu]") for a in c)]
    assert tpu, "the notebook no longer installs jax for TPUs"
    for cmd in tpu:
        (wheel,) = [a for a in cmd if a.startswith("jax[tpu]")]
        assert wheel == f"jax[tpu]=={jax_version}"
    for cmd in commands("pip", "install"):
        for arg in cmd:
            if arg.startswith("requirements"):
                assert (ROOT / arg).is_file(), arg
