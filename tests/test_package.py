"""The package as a library: a built wheel, installed outside the checkout, imports and runs one
jitted step; its declared dependencies admit the pinned test environment."""

import pathlib
import shutil
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]

STEP = """
import sys, jax, jax.numpy as jnp, optax
import ebomlc_jax
from ebomlc_jax import methods, models
assert ebomlc_jax.__file__.startswith(sys.argv[1]), ebomlc_jax.__file__
method = methods.create(
    "ebomlc",
    main_model=models.CifarResNet(10, blocks_per_stage=1, widths=(4, 8)),
    meta_model=models.MetaNet(10, embed_dim=8, hidden_dim=8),
    lr_schedule=optax.constant_schedule(0.1),
)
x = jax.random.normal(jax.random.key(1), (16, 8, 8, 3))
y = jnp.arange(16) % 10
state = method.init(jax.random.key(0), x[:1])
state, m = jax.jit(method.step, donate_argnums=0)(
    state, {"image": x[:8], "label": y[:8]}, {"image": x[8:], "label": y[8:]}
)
assert int(state["step"]) == 1 and all(bool(jnp.isfinite(v)) for v in m.values())
assert "tensorflow" not in sys.modules and "ml_collections" not in sys.modules
print("ok", sorted(m))
"""


def test_an_installed_wheel_imports_and_runs_one_jitted_step(tmp_path):
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    files = subprocess.run(  # the tracked files and the new ones: what a clean clone holds
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:  # building writes build/ and *.egg-info/ next to the sources
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("ebomlc_jax-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    assert not (target / "configs").exists() and (target / "ebomlc_jax" / "cpu").is_dir()
    out = subprocess.run(  # outside the checkout: only the installed copy can be imported
        [sys.executable, "-c", STEP, str(target)],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ['F', 'G'"), out.stdout


def test_the_pinned_environment_satisfies_the_declared_dependencies():
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = Version(version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    for requirement in map(Requirement, declared):
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is declared but not pinned in requirements.txt"
        assert pins[name] in requirement.specifier, (name, str(pins[name]), requirement)
