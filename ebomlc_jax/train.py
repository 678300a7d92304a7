"""The training loop: `train_and_evaluate(config, workdir)`.

Epochs of compiled steps, evaluation every epoch, metrics (JSON lines + TensorBoard), orbax
checkpoints every epoch and resume from the workdir, a stop with a message on NaN/Inf (the last
good checkpoint stays), `summary.json` and the figures at the end. With
`num_parallel_seeds > 1` the seeds train as one program (vmapped, or mapped in turn with
`parallel.seeds=map`) and each writes its own
`seed_<s>/` run directory (the checkpoint holds all of them).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from ebomlc_jax import checkpoint, cpu, epochs, evaluate, logs, methods, models, parallel, validate
from ebomlc_jax.analysis.runs import CONFUSION_HISTORY, DIAGNOSTICS
from ebomlc_jax.data import build_data
from ebomlc_jax.data.device import BatchSpec
from ebomlc_jax.data.pipeline import NoisyLabelData
from ebomlc_jax.errors import ConfigError

# Measurements shown on the progress lines (those a method has).
SHOWN = ("G", "F", "beta", "loss")
# Fields that say how to set a run up, not what it computes: changing them never blocks a resume.
SETUP_ONLY = (
    "data.download",
    "data.data_dir",
    "parallel.num_devices",
    "parallel.distributed",
    "checkpoint.asynchronous",
    "log_every_steps",
    "figures",
    "resume_with_changed_config",
)


class DivergenceError(RuntimeError):
    """A loss became NaN or Inf; the run stopped without saving the bad state."""


def load_data(config: ml_collections.ConfigDict, seed: int) -> NoisyLabelData:
    """The run's dataset, clean/noisy split and noisy labels for one seed."""
    return build_data(
        config.data.dataset,
        seed=seed,
        noise_kind=config.noise.kind,
        noise_rate=config.noise.rate,
        clean_fraction=config.data.clean_fraction,
        includes_true_class=config.noise.uniform_includes_true_class,
        data_dir=config.data.data_dir or None,
        download=config.data.download,
    )


def batch_spec(config: ml_collections.ConfigDict, data: NoisyLabelData) -> BatchSpec:
    """Batch sizes, augmentation and steps per epoch of the run on this data."""
    c = config.data
    return BatchSpec(
        data.num_noisy,
        data.num_clean,
        c.batch_size,
        c.clean_batch_size,
        c.augment,
        c.augment_pad,
        config.steps_per_epoch,
    )


def build_method(
    config: ml_collections.ConfigDict,
    num_classes: int,
    steps_per_epoch: int,
    axis_name: str | None = None,
    num_noisy: int = 0,
) -> methods.Method:
    """The configured method around the configured ResNet (with the CPU backend's fields)."""
    main = models.from_config(config.model, num_classes, axis_name, **cpu.resnet_fields())
    return methods.from_config(
        config,
        main_model=main,
        num_classes=num_classes,
        steps_per_epoch=steps_per_epoch,
        axis_name=axis_name,
        num_noisy=num_noisy,
    )


def comparable_config(config: ml_collections.ConfigDict) -> dict:
    """The config as JSON, without the setup-only fields and the blocks of other methods."""
    out = json.loads(config.to_json_best_effort())
    out["method"] = {k: v for k, v in out["method"].items() if k in ("name", config.method.name)}
    for dotted in SETUP_ONLY:
        *parents, last = dotted.split(".")
        node = out
        for p in parents:
            node = node.get(p, {})
        node.pop(last, None)
    return out


def check_resumable(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Refuse to resume a workdir whose config.json computes something else (naming the fields)."""
    path = workdir / "config.json"
    if not path.exists() or config.resume_with_changed_config:
        return
    saved = ml_collections.ConfigDict(json.loads(path.read_text()))
    diffs = _diff(comparable_config(saved), comparable_config(config))
    if diffs:
        raise ConfigError(
            f"workdir {workdir} holds a run with a different config; differing fields:\n  "
            + "\n  ".join(diffs)
            + "\nUse another --workdir, set these fields back, or pass "
            "--config.resume_with_changed_config=True to resume it anyway."
        )


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} (saved) -> {vb!r} (now)")
    return out


def _check_finite(
    meas: dict[str, np.ndarray], epoch: int, steps_per_epoch: int, evaluation: bool = False
) -> None:
    """Raise DivergenceError naming the first step whose measurements are NaN/Inf.

    Steps count from 1, as in metrics.jsonl (step k = after k optimiser steps); evaluation
    values are reported by their epoch.
    """
    for name, values in meas.items():
        bad = ~np.isfinite(values)
        if bad.any():
            index = int(np.argwhere(bad)[0][-1])
            value = values.reshape(-1, values.shape[-1])[:, index]
            where = (
                f"the evaluation after epoch {epoch + 1}"
                if evaluation
                else f"step {epoch * steps_per_epoch + index + 1} (epoch {epoch + 1})"
            )
            raise DivergenceError(
                f"{name} is {value} at {where}: training diverged; the last good checkpoint "
                f"(end of epoch {epoch}) is kept"
            )


def _fresh_record() -> dict:
    return {
        "best_clean_accuracy": -1.0,
        "best_clean_epoch": 0,
        "test_accuracy_at_best_clean": float("nan"),
        "wall_time_s": 0.0,
        "steps_done": 0,
    }


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict | list[dict]:
    """Train and evaluate; returns the summary (a list with several parallel seeds)."""
    validate.validate(config)
    parallel.initialize(config.parallel.distributed)
    workdir_path = pathlib.Path(workdir).absolute()
    check_resumable(workdir_path, config)
    writes = writes_files()
    say = print if writes else (lambda *a, **k: None)

    seeds = [config.seed + i for i in range(config.num_parallel_seeds)]
    datas = [load_data(config, s) for s in seeds]
    d0 = datas[0]
    validate.check_data(config, d0)
    method_class = methods.get(config.method.name)
    num_devices, warning = parallel.choose_device_count(
        config.parallel.num_devices,
        1 if len(seeds) > 1 else jax.device_count(),
        config.data.batch_size,
        config.data.clean_batch_size,
        method_class.clean_parts(method_class.hyperparameters(config)),
    )
    if warning:
        logging.warning("%s", warning)
        say(f"warning: {warning}", flush=True)
    spec = batch_spec(config, d0)
    spe = spec.steps_per_epoch
    total = config.num_epochs * spe
    progress = logs.Progress(total, config.num_epochs, spe)
    many = len(seeds) > 1
    axis = parallel.DATA_AXIS if config.parallel.mode == "pmap" else None
    method = build_method(config, d0.num_classes, spe, axis, d0.num_noisy)

    def report(step, values):  # inside an epoch, about every log_every_steps (not at its end)
        say(progress.report(int(step), {k: float(v) for k, v in values.items()}), flush=True)

    runner = epochs.Runner(
        method,
        spec,
        datas,
        seeds,
        input=config.data.input,
        scan=config.data.scan_epochs,
        mode=config.parallel.mode,
        num_devices=num_devices,
        seeds_mode=config.parallel.seeds,
        pass_batch_size=config.eval.batch_size,
        report_every=config.log_every_steps,
        on_report=report,
        shown=SHOWN,
    )
    evaluator = evaluate.Evaluator(
        method, runner.data, config.eval.batch_size, config.eval.meta_correction
    )
    ckpt = checkpoint.Checkpointer(
        workdir_path, config.checkpoint.keep, config.checkpoint.asynchronous
    )
    state = runner.init_state()
    restored = ckpt.restore_latest(state)
    if restored is None:
        start_epoch, records = 0, [_fresh_record() for _ in seeds]
    else:
        start_epoch, state, saved = restored
        state, records = runner.place(state), saved["seeds"]
        logging.info("resumed from %s at epoch %d", ckpt.directory, start_epoch)
        say(f"resumed from {ckpt.directory} after epoch {start_epoch}", flush=True)

    run_dirs = [workdir_path / f"seed_{s}" if many else workdir_path for s in seeds]
    if writes:  # the run really starts here: config.json, once everything above has passed
        workdir_path.mkdir(parents=True, exist_ok=True)
        (workdir_path / "config.json").write_text(
            json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)
        )
    writers = [logs.make_writer(d, writes) for d in run_dirs]
    say(
        banner(config, method, d0, num_devices, workdir_path, start_epoch, spe, len(seeds)),
        flush=True,
    )
    for d, data in zip(run_dirs, datas, strict=True):
        if writes:
            (d / "noise.json").write_text(json.dumps(data.noise, indent=1))
        say(
            f"{d.name}: {config.data.dataset} |D|={data.num_clean} |D'|={data.num_noisy} "
            f"{config.noise.kind} noise nominal {config.noise.rate:g} realised "
            f"{data.noise['realised_rate']:.4f}",
            flush=True,
        )

    last_eval = None
    try:
        if start_epoch < config.num_epochs:
            say("compiling the training epoch and the evaluation ...", flush=True)
            t0 = time.monotonic()
            runner.compile(state, start_epoch)
            evaluator.compile(state)
            say(f"compiled in {time.monotonic() - t0:.1f} s", flush=True)
        for epoch in range(start_epoch, config.num_epochs):
            t0 = time.time()
            state, meas = runner.run_epoch(state, epoch)
            _check_finite(meas, epoch, spe)
            ev = evaluator(state)
            _check_finite(
                {"eval/clean_loss": np.asarray(ev["clean_loss"])[..., None]}, epoch, 1, True
            )
            seconds = time.time() - t0
            step = (epoch + 1) * spe
            for i, (writer, record, run_dir) in enumerate(
                zip(writers, records, run_dirs, strict=True)
            ):
                seed_meas = {k: v[i] if many else v for k, v in meas.items()}
                seed_ev = {k: v[i] if many else v for k, v in ev.items()}
                _log_epoch(writer, run_dir, seed_meas, seed_ev, record, epoch, spe, config, writes)
                record["wall_time_s"] += seconds
                record["steps_done"] = step
            mean_clean = float(np.mean(ev["clean_accuracy"]))
            ckpt.save(epoch + 1, state, {"seeds": records}, mean_clean)
            last_eval = ev
            shown = {k: float(np.mean(meas[k])) for k in SHOWN if k in meas}  # epoch means
            shown.update(test=float(np.mean(ev["test_accuracy"])), clean=mean_clean)
            if "meta_correction_accuracy" in ev:
                shown["meta"] = float(np.mean(ev["meta_correction_accuracy"]))
            say(progress.report(step, shown, end_of_epoch=True), flush=True)
    finally:  # also on DivergenceError/Ctrl-C: finish the last good epoch's pending save
        ckpt.wait()
        ckpt.close()
        for w in writers:
            w.close()
    if last_eval is None and not all((d / "summary.json").is_file() for d in run_dirs):
        # Finished, but a summary.json is missing (killed between the last checkpoint and the
        # summary, or deleted): evaluate the restored final state and write the summaries again.
        last_eval = evaluator(state)

    summaries = []
    for i, (record, run_dir, seed, data) in enumerate(
        zip(records, run_dirs, seeds, datas, strict=True)
    ):
        if last_eval is None:  # resumed a finished run: report from the saved files
            summaries.append(json.loads((run_dir / "summary.json").read_text()))
            say(f"{run_dir.name}: already finished ({config.num_epochs} epochs)", flush=True)
            say(logs.summary_screen(summaries[-1]), flush=True)
            continue
        ev = {k: v[i] if many else v for k, v in last_eval.items()}
        summary = {
            "method": config.method.name,
            "variant": method.variant,
            "dataset": config.data.dataset,
            "noise_kind": config.noise.kind,
            "noise_rate": config.noise.rate,
            "seed": seed,
            "final_test_accuracy": float(ev["test_accuracy"]),
            "test_accuracy_at_best_clean": record["test_accuracy_at_best_clean"],
            "best_clean_epoch": record["best_clean_epoch"],
            "best_clean_accuracy": record["best_clean_accuracy"],
            "final_meta_correction_accuracy": (
                float(ev["meta_correction_accuracy"]) if "meta_correction_accuracy" in ev else None
            ),
            # None without a meta model, or where undefined (see analysis.runs.meta_diagnostics).
            **{f"final_{k}": _defined(ev[k]) if k in ev else None for k in DIAGNOSTICS},
            **{k: float(v) for k, v in ev.items() if k.startswith("test_accuracy_")},
            "wall_time_s": record["wall_time_s"],
            "steps_per_sec": record["steps_done"] / max(record["wall_time_s"], 1e-9),
            "realised_noise_rate": data.noise["realised_rate"],
            "num_devices": num_devices,
            "device": jax.devices()[0].device_kind,
            "run_dir": str(run_dir),
            "config": json.loads(config.to_json_best_effort()),
        }
        if writes:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        summaries.append(summary)
        say(logs.summary_screen(summary), flush=True)
    if config.figures and last_eval is not None and writes:
        from ebomlc_jax.analysis import write_figures  # matplotlib only when asked

        for run_dir in run_dirs:
            for path in write_figures([run_dir], run_dir):
                say(f"wrote {path}", flush=True)
    return summaries if many else summaries[0]


def writes_files() -> bool:
    """Whether this process writes the run's files and screen: process 0 of several hosts."""
    return jax.process_index() == 0


def banner(config, method, data, num_devices, workdir, start_epoch, spe, num_seeds) -> str:
    """The start line: what trains on what, where, for how long, from where."""
    name = config.method.name + (f"/{method.variant}" if method.variant else "")
    device = jax.devices()[0]
    start = f"resuming after epoch {start_epoch}" if start_epoch else "from scratch"
    if start_epoch >= config.num_epochs:
        start = "already finished"
    seeds = f"seeds {config.seed}..{config.seed + num_seeds - 1}" if num_seeds > 1 else "seed"
    return (
        f"ebomlc_jax: {name} on {config.data.dataset} ({config.noise.kind} noise "
        f"{config.noise.rate:g}), {seeds} {config.seed if num_seeds == 1 else ''}".rstrip()
        + f"\n  devices: {num_devices} x {device.device_kind} ({device.platform}), "
        f"parallel.mode={config.parallel.mode}"
        + f"\n  steps: {config.num_epochs} epochs x {spe} = {config.num_epochs * spe}; "
        f"{start}\n  workdir: {workdir}"
    )


def _log_epoch(writer, run_dir, meas, ev, record, epoch, spe, config, writes) -> None:
    """Train scalars every log_every_steps, the epoch's eval line, the confusion matrix and its
    line in the confusion history."""
    first = epoch * spe
    for s in range(spe):
        step = first + s + 1
        if step % config.log_every_steps == 0 or s == spe - 1:
            writer.write_scalars(step, {f"train/{k}": v[s] for k, v in meas.items()})
    test, clean = float(ev["test_accuracy"]), float(ev["clean_accuracy"])
    if clean > record["best_clean_accuracy"]:
        record.update(
            best_clean_accuracy=clean, best_clean_epoch=epoch + 1, test_accuracy_at_best_clean=test
        )
    scalars = {
        "eval/epoch": epoch + 1,
        "eval/test_accuracy": test,
        "eval/clean_accuracy": clean,
        "eval/clean_loss": float(ev["clean_loss"]),
        **{f"train_epoch/{k}": float(np.mean(v)) for k, v in meas.items()},
    }
    if "meta_correction_accuracy" in ev:
        scalars["eval/meta_correction_accuracy"] = float(ev["meta_correction_accuracy"])
        # An accuracy over an empty group (no mislabelled example at noise 0) is left out.
        scalars.update({f"eval/{k}": v for k in DIAGNOSTICS if (v := _defined(ev[k])) is not None})
        head = {"epoch": epoch + 1, "num_classes": int(ev["meta_confusion"].shape[0])}
        confusion = {**head, "counts": _counts(ev["meta_confusion"])}
        history = {
            **head,
            "mislabelled": _counts(ev["meta_confusion_mislabelled"]),
            "correct": _counts(ev["meta_confusion_correct"]),
            "changed": _counts(ev["meta_changed"]),
            "changed_to_true": _counts(ev["meta_changed_to_true"]),
        }
        if writes:
            (run_dir / "meta_confusion.json").write_text(json.dumps(confusion))
            _append_line(run_dir / CONFUSION_HISTORY, json.dumps(history))
    writer.write_scalars((epoch + 1) * spe, scalars)
    writer.flush()


def _counts(value) -> int | list:
    """Counts (summed as floats on the device) as JSON ints."""
    return np.asarray(value).round().astype(int).tolist()


def _defined(value) -> float | None:
    """A value as float; None where it is undefined (NaN), which JSON cannot hold."""
    value = float(value)
    return value if np.isfinite(value) else None


def _append_line(path: pathlib.Path, line: str) -> None:
    """Append one line; a cut last line (a run killed mid-write) is dropped first, so a resumed
    run's file holds whole lines only (readers take the last line of a repeated epoch)."""
    if path.exists() and path.stat().st_size:
        with open(path, "r+b") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
