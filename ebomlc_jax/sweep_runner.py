"""Executing a sweep (`ebomlc_jax.sweep`): which runs are finished, the local devices and their
slots, and the run.py subprocesses, one per slot, pinned to their device. No JAX here."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ebomlc_jax.errors import allowed
from ebomlc_jax.sweep_grid import REPO

if TYPE_CHECKING:
    from ebomlc_jax.sweep import Run

LOG, RECORD = "sweep.log", "sweep.json"
TAIL_LINES = 20  # of a failed run's log, shown on the screen
TPU_PORT = 8476  # first TPU mesh-controller port; one per concurrent TPU process
ALLOCATION_FLAGS = {"XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE"}
Slot = tuple[str, dict[str, str]]  # (label, environment variables of the runs in this slot)


def _read_json(path: pathlib.Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def finished(workdir: pathlib.Path, num_epochs: int | None = None) -> bool:
    """Whether a run is done: summary.json whose config's num_epochs equals that of the workdir's
    config.json (its latest start) and `num_epochs` (the sweep's --set) if given."""
    summary = _read_json(workdir / "summary.json")
    epochs = (summary or {}).get("config", {}).get("num_epochs")
    if not isinstance(epochs, int):
        return False
    started = _read_json(workdir / "config.json")
    if started is not None and started.get("num_epochs") != epochs:
        return False
    return num_epochs is None or epochs == num_epochs


def nvidia_gpus(listing: str) -> int:
    """The number of GPUs in `nvidia-smi -L`'s output (MIG lines are parts of one GPU)."""
    return len(re.findall(r"^GPU \d+:", listing, re.M))


def tpu_chips(dev: pathlib.Path = pathlib.Path("/dev")) -> list[str]:
    """Local TPU chip indices from their device files (/dev/accel<n>; /dev/vfio/<n> on v5e+)."""
    accel = sorted(int(p.name[5:]) for p in dev.glob("accel*") if p.name[5:].isdigit())
    vfio = dev / "vfio"
    chips = accel or sorted(int(p.name) for p in vfio.glob("*") if p.name.isdigit())
    return [str(i) for i in range(len(chips))]


def local_devices(env: Mapping[str, str]) -> tuple[str, list[str]]:
    """('gpu', ids) / ('tpu', chips) / ('cpu', []), without JAX: nvidia-smi, then /dev.

    GPU ids are CUDA_VISIBLE_DEVICES' entries where it is set (so it restricts the sweep)."""
    smi = shutil.which("nvidia-smi")
    listing = ""
    if smi:
        proc = subprocess.run([smi, "-L"], capture_output=True, text=True)
        listing = proc.stdout if proc.returncode == 0 else ""
    if nvidia_gpus(listing):
        visible = env.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return "gpu", [str(i) for i in range(nvidia_gpus(listing))]
        ids = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return ("gpu", ids) if ids else ("cpu", [])
    chips = tpu_chips()
    return ("tpu", chips) if chips else ("cpu", [])


def device_slots(kind: str, ids: Sequence[str], per_device: int, env: Mapping[str, str]):
    """One slot per concurrent run: `per_device` per GPU (each with its share of the memory
    unless the environment sets JAX's allocation), one per TPU chip, `per_device` on a CPU."""
    if kind == "gpu":
        extra = {}
        if per_device > 1 and not ALLOCATION_FLAGS & set(env):
            extra["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / per_device:.3f}"
        return [
            (f"gpu {i}", {"CUDA_VISIBLE_DEVICES": i, **extra})
            for i in ids
            for _ in range(per_device)
        ]
    if kind == "tpu":
        if per_device != 1:
            raise allowed("--runs-per-device", per_device, "1 on TPU (a chip serves one process)")
        return [
            (
                f"tpu {chip}",
                {
                    "TPU_VISIBLE_CHIPS": chip,
                    "TPU_VISIBLE_DEVICES": chip,
                    "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
                    "TPU_PROCESS_BOUNDS": "1,1,1",
                    "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{TPU_PORT + n}",
                    "TPU_MESH_CONTROLLER_PORT": str(TPU_PORT + n),
                },
            )
            for n, chip in enumerate(ids)
        ]
    return [("cpu", {}) for _ in range(per_device)]


def slots(per_device: int) -> list[Slot]:
    """This machine's slots (see device_slots)."""
    kind, ids = local_devices(os.environ)
    return device_slots(kind, ids, per_device, os.environ)


def _tail(path: pathlib.Path, offset: int, lines: int = TAIL_LINES) -> str:
    """The last lines the run wrote to its log after `offset`."""
    with open(path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return "\n".join("    | " + line for line in text.rstrip("\n").splitlines()[-lines:])


def _start(run: Run, slot: Slot) -> tuple[subprocess.Popen, int]:
    """Write the run's record and log header, then start run.py; (process, log offset)."""
    run.workdir.mkdir(parents=True, exist_ok=True)
    command = run.command()
    record = {
        "family": run.family,
        "setting": run.setting.name,
        "method": run.method,
        "seed": run.seed,
        "config": str(run.config),
        "overrides": dict(run.overrides),
        "command": command,
    }
    (run.workdir / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    log = run.workdir / LOG
    with open(log, "ab") as f:
        offset = f.tell()
        f.write(f"=== sweep {time.strftime('%Y-%m-%d %H:%M:%S')} on {slot[0]}\n".encode())
        f.write((shlex.join(command) + "\n").encode())
        f.flush()
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **slot[1], "PYTHONUNBUFFERED": "1"},
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc, offset


def _accuracy(workdir: pathlib.Path) -> str:
    summary = _read_json(workdir / "summary.json") or {}
    value = summary.get("final_test_accuracy")
    return f"final test {100 * value:.2f}%" if isinstance(value, int | float) else ""


def run_all(runs: Sequence[Run], pending: Sequence[Run], slots: Sequence[Slot]) -> int:
    """Run `pending` with one run per slot at a time; 0 if all finish, 1 if any failed."""
    total, queue, free = len(pending), list(pending), list(slots)
    where = sorted({label for label, _ in slots})
    family = runs[0].family if runs else "?"
    print(
        f"sweep {family}: {len(runs)} runs, {len(runs) - total} finished (skipped), {total} to "
        f"run, {len(slots)} at a time on {', '.join(where)}",
        flush=True,
    )
    running: dict[subprocess.Popen, tuple[Run, Slot, int, float, int]] = {}
    failed: list[Run] = []
    done = started = 0
    try:
        while queue or running:
            while queue and free:
                run, slot = queue.pop(0), free.pop(0)
                started += 1
                resuming = " (resuming)" if (run.workdir / "checkpoints").is_dir() else ""
                proc, offset = _start(run, slot)
                running[proc] = (run, slot, offset, time.monotonic(), started)
                print(f"[start {started}/{total}] {run.name} on {slot[0]}{resuming}", flush=True)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                run, slot, offset, t0, n = running.pop(proc)
                free.append(slot)
                seconds = time.monotonic() - t0
                if proc.returncode == 0 and finished(run.workdir):
                    done += 1
                    print(
                        f"[done {n}/{total}] {run.name} in {seconds:.0f} s  "
                        f"{_accuracy(run.workdir)}".rstrip(),
                        flush=True,
                    )
                    continue
                failed.append(run)
                why = f"exit {proc.returncode}" if proc.returncode else "exit 0, no summary.json"
                print(
                    f"[FAILED {n}/{total}] {run.name} ({why}) after {seconds:.0f} s; workdir "
                    f"{run.workdir}, log {run.workdir / LOG}:\n{_tail(run.workdir / LOG, offset)}",
                    flush=True,
                )
    except KeyboardInterrupt:
        for proc in running:  # the runs this sweep started: stop them; their checkpoints stay
            proc.terminate()
        for proc in running:
            proc.wait()
        print(f"interrupted: {len(running)} runs stopped; rerun to resume them", file=sys.stderr)
        return 130
    status = f"{done} finished now, {len(runs) - total} skipped, {len(failed)} failed"
    print(f"sweep {family}: {len(runs)} runs: {status}", flush=True)
    for run in failed:
        print(f"  failed: {run.workdir} (log {run.workdir / LOG})", flush=True)
    return 1 if failed else 0
