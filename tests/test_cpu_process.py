"""ebomlc_jax.cpu: when entry points restart with glibc huge pages, and that they get them."""

import os
import pathlib
import subprocess
import sys

import pytest

from ebomlc_jax import cpu as host

ROOT = pathlib.Path(__file__).resolve().parents[1]
ON = "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize(
    "environ, thp, glibc, plugins, expected",
    [
        ({}, "madvise", (2, 36), [], ON),
        # other tunables are kept
        (
            {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
            "madvise",
            (2, 35),
            [],
            f"glibc.malloc.arena_max=2:{ON}",
        ),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36), [], None),
        ({"GLIBC_TUNABLES": ON}, "madvise", (2, 36), [], None),  # the restarted process
        ({}, "always", (2, 36), [], None),
        ({}, "never", (2, 36), [], None),
        ({}, None, (2, 36), [], None),
        ({}, "madvise", (2, 34), [], None),
        ({}, "madvise", None, [], None),
        ({}, "madvise", (2, 36), ["jax-cuda12-plugin"], None),
    ],
)
def test_huge_page_tunables(environ, thp, glibc, plugins, expected):
    assert host.huge_page_tunables(environ, thp, glibc, plugins) == expected


@pytest.mark.parametrize(
    "text, mode",
    [
        ("always [madvise] never\n", "madvise"),
        ("[always] madvise never\n", "always"),
        ("always madvise [never]\n", "never"),
        ("garbled\n", None),
    ],
)
def test_thp_mode_reads_the_selected_mode(tmp_path, text, mode):
    path = tmp_path / "enabled"
    path.write_text(text)
    assert host.thp_mode(str(path)) == mode
    assert host.thp_mode(str(tmp_path / "missing")) is None


def test_glibc_version(monkeypatch):
    monkeypatch.setattr(os, "confstr", lambda name: "glibc 2.36")
    assert host.glibc_version() == (2, 36)

    def not_glibc(name):
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(os, "confstr", not_glibc)
    assert host.glibc_version() is None


# Restarts (printing "start" twice) and then reports its arguments, GLIBC_TUNABLES and how much
# of a touched 64 MiB malloc the kernel backed with huge pages.
CHILD = """
import ctypes, os, sys
print("start", flush=True)
from ebomlc_jax import cpu as host
host.reexec_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
p = libc.malloc(size)
ctypes.memset(p, 1, size)
kb = {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/smaps_rollup") if "kB" in l}
print("argv", sys.argv[1:], "tunables", os.environ.get("GLIBC_TUNABLES"))
print("huge_kb", kb["AnonHugePages"])
"""


def skip_unless_this_machine_restarts() -> None:
    decision = host.huge_page_tunables(
        {}, host.thp_mode(), host.glibc_version(), host.accelerator_plugins()
    )
    if decision is None:
        pytest.skip("no restart on this machine (THP not in madvise mode, no glibc, or a plugin)")


def environ_without_tunables() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}


def run_child(tunables: str | None) -> list[str]:
    env = environ_without_tunables()
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run(
        [sys.executable, "-c", CHILD, "x", "--flag=1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.splitlines()


def test_an_entry_point_restarts_once_with_huge_pages_and_gets_them():
    skip_unless_this_machine_restarts()
    lines = run_child(None)
    assert lines[:2] == ["start", "start"], lines  # restarted exactly once
    assert lines[2] == f"argv ['x', '--flag=1'] tunables {ON}"
    with_huge = int(lines[3].split()[1])

    lines = run_child("glibc.malloc.hugetlb=0")  # the user's value wins: no restart
    assert lines[:2] == ["start", "argv ['x', '--flag=1'] tunables glibc.malloc.hugetlb=0"]
    without = int(lines[2].split()[1])
    # 64 MiB touched: most of it in 2 MiB pages with the tunable, none of it without.
    assert with_huge - without >= 32 * 1024, (with_huge, without)


@pytest.mark.parametrize(
    "entry",
    [
        ["run.py"],
        ["-m", "benchmarks.step_time"],
        ["-m", "benchmarks.epoch_time"],
        ["-m", "benchmarks.full_run"],
    ],
    ids=lambda e: e[-1],
)
def test_entry_points_restart_once_and_before_jax_is_imported(entry):
    """One helper (`cpu.prepare_process`) restarts every entry point once. run.py, epoch_time and
    full_run import JAX only after the restart; step_time's parser lists the methods of
    benchmarks.common, which imports JAX first (a second's import, in a benchmark)."""
    skip_unless_this_machine_restarts()
    out = subprocess.run(
        [sys.executable, "-X", "importtime", *entry, "--help"],
        cwd=ROOT,
        env=environ_without_tunables(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    imports = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()]
    hosts = [i for i, name in enumerate(imports) if name == "ebomlc_jax.cpu"]
    assert len(hosts) == 2, out.stderr[-2000:]  # once per process image: restarted once
    assert "--" in out.stdout, out.stdout[-2000:]  # its help (absl exits 1 after --help)
    before_restart = imports[: hosts[1]]
    jax_first = [n for n in before_restart if n == "jax" or n.startswith("jax.")]
    assert bool(jax_first) == (entry[-1] == "benchmarks.step_time"), before_restart
