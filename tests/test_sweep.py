"""The sweep (`python -m ebomlc_jax.sweep`): each family's grid of commands, a real sweep of tiny
runs that finishes, skips and resumes, failures that do not stop it, devices and bad arguments."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time

import pytest

from ebomlc_jax import methods, sweep, sweep_grid, sweep_runner
from ebomlc_jax.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "tiny_config.py"
CELLS = ("uniform0", "uniform20", "uniform40", "uniform60", "uniform80", "flip20", "flip40")
K, RHO, XI = (
    ("1", "2", "5"),
    ("0.1", "0.2", "0.4", "0.8"),
    ("0.01", "0.05", "0.5", "1"),
)  # Figs. 7-9
FLOOR = "method.ce.train_on"
PAPER_METHODS = {
    "ebomlc",
    "mlc",
    "mlc_d",
    "glc",
    "l2rw",
    "mwnet",
    "pmwnet",
    "coteaching_plus",
    "dividemix",
}


def every_method() -> dict[str, dict[str, str]]:
    """The table/digits families' methods: the registry's, with ce as its three floors."""
    out = {m: {} for m in methods.REGISTRY if m != "ce"}
    out |= {"ce": {FLOOR: "both"}, "ce-noisy": {FLOOR: "noisy"}, "ce-clean": {FLOOR: "clean"}}
    return out


def expected_settings(family: str, all_settings: bool = False) -> dict[str, tuple[str, dict]]:
    """setting name -> (config file, overrides) of each family, written out from the paper."""
    if family in ("table1", "table2"):
        d = {"table1": "cifar10", "table2": "cifar100"}[family]
        return {f"{d}_{c}": (f"configs/{d}_{c}.py", {}) for c in CELLS}
    if family == "digits":
        return {
            "digits_uniform60": (str(TINY), {"noise.kind": "uniform", "noise.rate": "0.6"}),
            "digits_flip40": (str(TINY), {"noise.kind": "flip", "noise.rate": "0.4"}),
        }
    if family == "digits_ablations":
        return {
            f"digits_uniform60-{f}{v}": (str(TINY), {f"method.ebomlc.{f}": v})
            for f, values in (("k", K), ("rho", RHO), ("xi", XI))
            for v in values
        }
    field, values, stems = {
        "k": ("k", K, [f"cifar10_uniform{r}" for r in (20, 40, 80)]),
        "rho": (
            "rho",
            RHO,
            [f"{d}_uniform{r}" for d in ("cifar10", "cifar100") for r in (20, 40, 80)],
        ),
        "xi": ("xi", XI, ["cifar10_uniform40"]),
        "variants": (
            "variant",
            ("paper", "reference"),
            [
                f"{d}_{c}"
                for d in ("cifar10", "cifar100")
                for c in (CELLS if all_settings else ("uniform40", "uniform80", "flip40"))
            ],
        ),
    }[family]
    label = "" if family == "variants" else field
    return {
        f"{s}-{label}{v}": (f"configs/{s}.py", {f"method.ebomlc.{field}": v})
        for s in stems
        for v in values
    }


def parse(line: str, root: pathlib.Path) -> tuple:
    """(setting, method dir, seed, config file, registered method, overrides) of one command."""
    python, script, *flags = shlex.split(line)
    assert (python, script) == (sys.executable, str(ROOT / "run.py"))
    values = dict(f.removeprefix("--").split("=", 1) for f in flags)
    assert len(values) == len(flags), line  # no flag twice
    family, setting, method, seed = pathlib.Path(values.pop("workdir")).relative_to(root).parts
    config = pathlib.Path(values.pop("config"))
    config = str(config.relative_to(ROOT) if config.is_relative_to(ROOT / "configs") else config)
    name, s = values.pop("config.method.name"), values.pop("config.seed")
    assert seed == f"seed{s}"
    overrides = {k.removeprefix("config."): v for k, v in values.items()}
    return family, setting, method, int(s), config, name, overrides


def print_commands(args: list[str], capsys) -> list[str]:
    assert sweep.main([*args, "--print-commands"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err == f"{len(lines)} pending of {len(lines)} runs\n"
    return lines


# ----------------------------------------------------------------------------- the grids
@pytest.mark.parametrize(
    "family,extra",
    [
        ("table1", []),
        ("table2", []),
        ("k", []),
        ("rho", []),
        ("xi", []),
        ("variants", []),
        ("variants", ["--settings=all"]),
        ("digits", [f"--config={TINY}"]),
        ("digits_ablations", [f"--config={TINY}"]),
    ],
)
def test_every_family_prints_exactly_its_grid(family, extra, tmp_path, capsys):
    lines = print_commands([f"--root={tmp_path}", f"--family={family}", *extra], capsys)
    settings = expected_settings(family, "--settings=all" in extra)
    ablation = family in ("k", "rho", "xi", "variants", "digits_ablations")
    methods_ = {"ebomlc": {}} if ablation else every_method()
    expected = [
        (family, name, m, seed, config, "ce" if m.startswith("ce") else m, {**over, **m_over})
        for name, (config, over) in settings.items()
        for m, m_over in methods_.items()
        for seed in (0, 1, 2)
    ]
    got = [parse(line, tmp_path) for line in lines]
    key = lambda r: (*r[:6], tuple(sorted(r[6].items())))  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, expected))
    assert len(got) == len(settings) * len(methods_) * 3
    assert [r[3] for r in got] == sorted(r[3] for r in got)  # seed 0 of everything first
    if not family.startswith("digits"):
        assert all((ROOT / r[4]).is_file() for r in got)


def test_table_methods_are_the_registry_with_the_ce_floors():
    assert sweep_grid.registered_methods() == tuple(sorted(methods.REGISTRY))
    names = sweep_grid.allowed_methods("table1", sweep_grid.registered_methods())
    assert PAPER_METHODS <= set(names) and {"ce", "ce-noisy", "ce-clean"} <= set(names)
    assert sweep_grid.allowed_methods("k", names) == ("ebomlc",)


def test_restricting_methods_seeds_settings_and_adding_sets(tmp_path, capsys):
    lines = print_commands(
        [
            f"--root={tmp_path}",
            "--family=rho",
            "--methods=ebomlc",
            "--seeds=4,1",
            "--settings=cifar100_uniform80-rho0.8,cifar10_uniform20-rho0.1",
            "--set",
            "num_epochs=7",
            "--set=data.data_dir=/d d",
        ],
        capsys,
    )
    got = [parse(line, tmp_path) for line in lines]
    sets = {"num_epochs": "7", "data.data_dir": "/d d"}
    c100 = ("rho", "cifar100_uniform80-rho0.8", "ebomlc")
    c10 = ("rho", "cifar10_uniform20-rho0.1", "ebomlc")
    assert got == [
        (*c100, 4, "configs/cifar100_uniform80.py", "ebomlc", {"method.ebomlc.rho": "0.8", **sets}),
        (*c10, 4, "configs/cifar10_uniform20.py", "ebomlc", {"method.ebomlc.rho": "0.1", **sets}),
        (*c100, 1, "configs/cifar100_uniform80.py", "ebomlc", {"method.ebomlc.rho": "0.8", **sets}),
        (*c10, 1, "configs/cifar10_uniform20.py", "ebomlc", {"method.ebomlc.rho": "0.1", **sets}),
    ]
    assert not (tmp_path / "rho").exists()  # printing commands writes nothing


def test_the_sweep_process_never_imports_jax(tmp_path):
    code = (
        "import sys; from ebomlc_jax import sweep\n"
        f"assert sweep.main(['--root={tmp_path}', '--family=table1', '--print-commands']) == 0\n"
        "assert not {'jax', 'ml_collections', 'tensorflow'} & set(sys.modules), sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 7 * 12 * 3


# ----------------------------------------------------------------------------- bad arguments
BAD = [
    (["--family=table3"], r"--family='table3' is not allowed; allowed values: \('table1', "),
    (["--family=table1", "--methods=ebomlc,nope"], r"--methods='nope' .*'ce-noisy', "),
    (
        ["--family=k", "--methods=mlc"],
        r"--methods='mlc' is not allowed; allowed values: \('ebomlc',\)",
    ),
    (["--family=k", "--methods=ebomlc,ebomlc"], r"--methods='ebomlc' .*\('ebomlc',\)"),
    (["--family=k", "--set", "num_epochs"], r"--set='num_epochs' .*key=value"),
    (["--family=k", "--set", "a b=1"], r"--set='a b=1' .*key=value"),
    (
        ["--family=k", "--set", "method.ebomlc.k=3"],
        r"--set='method.ebomlc.k=3' .*the sweep does not",
    ),
    (["--family=k", "--set", "seed=3"], r"--set='seed=3' .*the sweep does not set"),
    (["--family=k", "--set", "num_epochs=x"], r"--set='num_epochs=x' .*an integer"),
    (["--family=k", "--set", "num_epochs=0"], r"--set='num_epochs=0' .*an integer >= 1"),
    (["--family=k", "--seeds=0,0"], r"--seeds='0,0' .*distinct integers"),
    (["--family=k", "--seeds=-1"], r"--seeds='-1' .*distinct integers"),
    (["--family=xi", "--settings=cifar10_uniform40-xi2"], r"--settings=.*-xi0.01', .*'all'\)"),
    (["--family=k", "--runs-per-device=0"], r"--runs-per-device='0' .*an integer >= 1"),
    (["--family=k", "--config=nope.py"], r"--config='nope.py' .*an existing \.py file"),
    (
        ["--family=k", "--workers=2"],
        r"unrecognized arguments: --workers=2; allowed arguments: .*--seeds",
    ),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_are_one_line_before_anything_runs(args, message, tmp_path, capsys):
    root = tmp_path / "root"
    assert sweep.main([f"--root={root}", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("ConfigError: "), err
    assert re.search(message, err), err
    assert not root.exists()


def test_a_missing_family_config_names_it_and_the_way_out(tmp_path, monkeypatch, capsys):
    missing = [sweep_grid.Setting("x", "configs/not_there.py")]
    monkeypatch.setitem(sweep_grid.FAMILIES, "digits", missing)
    assert sweep.main([f"--root={tmp_path}", "--family=digits"]) == 2
    err = capsys.readouterr().err
    needs = "--family=digits needs configs/not_there.py, which is missing; pass --config"
    assert err == f"ConfigError: {needs}\n"


# ----------------------------------------------------------------------------- devices
def test_gpu_slots_pin_each_run_to_one_device_and_share_its_memory():
    one = sweep_runner.device_slots("gpu", ["0", "1"], 1, {})
    assert one == [
        ("gpu 0", {"CUDA_VISIBLE_DEVICES": "0"}),
        ("gpu 1", {"CUDA_VISIBLE_DEVICES": "1"}),
    ]
    two = sweep_runner.device_slots("gpu", ["3", "5"], 2, {})
    assert [s[1]["CUDA_VISIBLE_DEVICES"] for s in two] == ["3", "3", "5", "5"]
    assert {s[1]["XLA_PYTHON_CLIENT_MEM_FRACTION"] for s in two} == {"0.450"}
    own = sweep_runner.device_slots("gpu", ["0"], 2, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    assert own == [("gpu 0", {"CUDA_VISIBLE_DEVICES": "0"})] * 2
    assert sweep_runner.device_slots("cpu", [], 3, {}) == [("cpu", {})] * 3


def test_tpu_slots_are_one_process_per_chip_on_its_own_port():
    slots = sweep_runner.device_slots("tpu", ["0", "1", "2", "3"], 1, {})
    assert [s[1]["TPU_VISIBLE_CHIPS"] for s in slots] == ["0", "1", "2", "3"]
    assert len({s[1]["TPU_MESH_CONTROLLER_PORT"] for s in slots}) == 4
    assert all(s[1]["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1" for s in slots)
    with pytest.raises(ConfigError, match="--runs-per-device=2 .*1 on TPU"):
        sweep_runner.device_slots("tpu", ["0"], 2, {})


def test_local_devices_come_from_nvidia_smi_and_cuda_visible_devices(tmp_path, monkeypatch):
    listing = "GPU 0: NVIDIA H100 (UUID: GPU-a)\n  MIG 1g.10gb Device 0: (UUID: MIG-b)\nGPU 1: X\n"
    smi = tmp_path / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '{listing}'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert sweep_runner.local_devices({}) == ("gpu", ["0", "1"])
    assert sweep_runner.local_devices({"CUDA_VISIBLE_DEVICES": "1, 0"}) == ("gpu", ["1", "0"])
    assert sweep_runner.local_devices({"CUDA_VISIBLE_DEVICES": ""}) == ("cpu", [])


def test_tpu_chips_are_counted_from_their_device_files(tmp_path):
    assert sweep_runner.tpu_chips(tmp_path) == []
    (tmp_path / "vfio").mkdir()
    for name in ("vfio", "0", "1"):
        (tmp_path / "vfio" / name).touch()
    assert sweep_runner.tpu_chips(tmp_path) == ["0", "1"]
    for name in ("accel0", "accel1", "accel2", "accelerator"):
        (tmp_path / name).touch()
    assert sweep_runner.tpu_chips(tmp_path) == ["0", "1", "2"]


FAKE_RUN = """
import json, os, pathlib, sys, time
d = pathlib.Path(sys.argv[1])
t0 = time.time()
time.sleep(0.5)
if d.name == "seed3":
    sys.exit("boom: seed 3 fails")
env = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_MEM_FRACTION")}
(d / "trace.json").write_text(json.dumps({**env, "t0": t0, "t1": time.time()}))
(d / "summary.json").write_text(json.dumps({"config": {"num_epochs": 1}}))
"""


class FakeRun(sweep.Run):
    def command(self, python=sys.executable):
        return [python, "-c", FAKE_RUN, str(self.workdir)]


def test_runs_go_one_per_slot_pinned_and_a_failure_does_not_stop_the_rest(tmp_path, capsys):
    setting = sweep_grid.Setting("s", "configs/x.py")
    runs = [
        FakeRun("f", setting, "m", seed, TINY, (), tmp_path / "f" / "s" / "m" / f"seed{seed}")
        for seed in range(6)
    ]
    slots = sweep_runner.device_slots("gpu", ["0", "1"], 1, {})
    assert sweep_runner.run_all(runs, runs, slots) == 1
    out = capsys.readouterr().out
    traces = {
        r.seed: json.loads((r.workdir / "trace.json").read_text()) for r in runs if r.seed != 3
    }
    assert {t["CUDA_VISIBLE_DEVICES"] for t in traces.values()} == {"0", "1"}
    for a in traces.values():  # overlapping runs were on different GPUs, at most two at a time
        overlapping = [b for b in traces.values() if b["t0"] < a["t1"] and a["t0"] < b["t1"]]
        assert len(overlapping) <= 2
        assert len({b["CUDA_VISIBLE_DEVICES"] for b in overlapping}) == len(overlapping)
    assert out.count("[start ") == 6 and out.count("[done ") == 5
    assert re.search(r"^\[FAILED \d/6\] f/s/m/seed3 \(exit 1\) after .*sweep\.log:$", out, re.M)
    assert re.search(r"^    \| boom: seed 3 fails$", out, re.M), out
    assert out.rstrip().endswith(f"failed: {runs[3].workdir} (log {runs[3].workdir / 'sweep.log'})")
    assert "6 runs: 5 finished now, 0 skipped, 1 failed" in out


def test_finished_means_a_summary_of_the_latest_start_and_the_asked_epochs(tmp_path):
    assert not sweep_runner.finished(tmp_path)
    (tmp_path / "summary.json").write_text('{"config": {"num_epochs": 2}}')
    assert sweep_runner.finished(tmp_path) and sweep_runner.finished(tmp_path, 2)
    assert not sweep_runner.finished(tmp_path, 3)
    (tmp_path / "config.json").write_text('{"num_epochs": 3}')  # restarted for longer
    assert not sweep_runner.finished(tmp_path)
    (tmp_path / "config.json").write_text('{"num_epochs": 2}')
    assert sweep_runner.finished(tmp_path)
    (tmp_path / "summary.json").write_text('{"config": {"num_ep')  # cut short
    assert not sweep_runner.finished(tmp_path)


# ----------------------------------------------------------------------------- real sweeps
def run_sweep(root, *args) -> subprocess.CompletedProcess:
    """`python -m ebomlc_jax.sweep` on the tiny config (this environment: the XLA cache)."""
    command = [sys.executable, "-m", "ebomlc_jax.sweep", f"--root={root}", f"--config={TINY}"]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


# One device and no meta-correction pass: less to compile (the tests' XLA cache is cold).
FAST = ["--set", "parallel.num_devices=1", "--set", "eval.meta_correction=False"]
GRID = ["--family=digits", "--methods=ce,ebomlc", "--seeds=0,1", *FAST, "--set", "num_epochs=2"]
WORKDIRS = [
    f"digits/{s}/{m}/seed{seed}"
    for s in ("digits_uniform60", "digits_flip40")
    for m in ("ce", "ebomlc")
    for seed in (0, 1)
]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A finished sweep of 8 tiny runs (2 settings x 2 methods x 2 seeds, 2 epochs each)."""
    root = tmp_path_factory.mktemp("sweep")
    proc = run_sweep(root, *GRID, "--runs-per-device=2")
    return root, proc


def files(root) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_a_sweep_runs_every_run_to_its_summary(swept):
    root, proc = swept
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.startswith("sweep digits: 8 runs, 0 finished (skipped), 8 to run, 2 at a time")
    assert out.count("[start ") == 8 and out.count("[done ") == 8
    assert out.rstrip().endswith("sweep digits: 8 runs: 8 finished now, 0 skipped, 0 failed")
    for name in WORKDIRS:
        _, setting, method, seed = name.split("/")
        summary = json.loads((root / name / "summary.json").read_text())
        kind, rate = ("uniform", 0.6) if setting == "digits_uniform60" else ("flip", 0.4)
        assert (summary["method"], summary["seed"]) == (method, int(seed[4:]))
        assert (summary["noise_kind"], summary["noise_rate"]) == (kind, rate)
        assert summary["config"]["num_epochs"] == 2
        assert summary["config"]["method"]["ce"]["train_on"] == "both"
        assert re.search(rf"^\[done \d/8\] {name} in \d+ s  final test [\d.]+%$", out, re.M)
        record = json.loads((root / name / "sweep.json").read_text())
        assert record["overrides"] == {
            "noise.kind": kind,
            "noise.rate": str(rate),
            **({"method.ce.train_on": "both"} if method == "ce" else {}),
            "parallel.num_devices": "1",
            "eval.meta_correction": "False",
            "num_epochs": "2",
        }
    assert len(list(root.rglob("summary.json"))) == 8


def test_a_second_sweep_skips_every_finished_run(swept):
    root, _ = swept
    before = files(root)
    proc = run_sweep(root, *GRID, "--runs-per-device=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[start" not in proc.stdout
    assert (
        proc.stdout.splitlines()[-1] == "sweep digits: 8 runs: 0 finished now, 8 skipped, 0 failed"
    )
    assert files(root) == before  # no run.py started: nothing written, sweep.log included
    printed = run_sweep(root, *GRID, "--print-commands")
    assert (printed.stdout, printed.stderr) == ("", "0 pending of 8 runs\n")
    longer = run_sweep(root, *GRID[:-1], "num_epochs=3", "--print-commands")
    assert len(longer.stdout.splitlines()) == 8  # asked for more epochs: none is finished


def test_a_sweep_resumes_runs_without_a_summary_from_their_checkpoints(swept):
    root, _ = swept
    cut = root / WORKDIRS[1]  # lost its last epoch: summary and newest checkpoint deleted
    lost = root / WORKDIRS[6]  # finished, but its summary is gone
    saved = {d: json.loads((d / "summary.json").read_text()) for d in (cut, lost)}
    for d in (cut, lost):
        (d / "summary.json").unlink()
    subprocess.run(["rm", "-r", str(cut / "checkpoints" / "2")], check=True)
    untouched = {k: v for k, v in files(root).items() if not k.startswith((str(cut), str(lost)))}
    proc = run_sweep(root, *GRID)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("[start ") == 2 and proc.stdout.count(" (resuming)") == 2
    assert (
        proc.stdout.splitlines()[-1] == "sweep digits: 8 runs: 2 finished now, 6 skipped, 0 failed"
    )
    for d, epoch in ((cut, 1), (lost, 2)):
        log = (d / "sweep.log").read_text()
        assert log.count("=== sweep ") == 2 and f"after epoch {epoch}\n" in log
        summary = json.loads((d / "summary.json").read_text())
        # bitwise resume: the same test accuracy as the uninterrupted run
        assert summary["final_test_accuracy"] == saved[d]["final_test_accuracy"]
    epochs = [json.loads(x)["eval/epoch"] for x in (cut / "metrics.jsonl").open() if "eval/" in x]
    assert epochs == [1, 2, 2]
    assert {k: v for k, v in files(root).items() if k in untouched} == untouched


def test_a_failing_run_is_reported_and_the_others_still_run(tmp_path):
    args = ["--family=digits", "--settings=digits_flip40", "--methods=ebomlc,ce", "--seeds=0"]
    t0 = time.monotonic()
    proc = run_sweep(tmp_path, *args, *FAST, "--set", "num_epochs=1", "--set", "method.ebomlc.xi=2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad, good = (tmp_path / "digits" / "digits_flip40" / m / "seed0" for m in ("ebomlc", "ce"))
    out = proc.stdout
    assert re.search(
        rf"^\[FAILED 1/2\] digits/digits_flip40/ebomlc/seed0 \(exit 1\) after \d+ s; workdir "
        rf"{re.escape(str(bad))}, log {re.escape(str(bad / 'sweep.log'))}:$",
        out,
        re.M,
    ), out
    message = "ConfigError: method.ebomlc.xi=2.0 is not allowed; allowed values: a number in (0, 1]"
    assert f"    | {message}\n" in out and message in (bad / "sweep.log").read_text()
    assert out.index("[FAILED 1/2]") < out.index("[start 2/2]")
    assert json.loads((good / "summary.json").read_text())["method"] == "ce"
    assert not (bad / "summary.json").exists()
    assert out.splitlines()[-2:] == [
        "sweep digits: 2 runs: 1 finished now, 0 skipped, 1 failed",
        f"  failed: {bad} (log {bad / 'sweep.log'})",
    ]
    assert time.monotonic() - t0 < 120
