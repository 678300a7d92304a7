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
from ebomlc_jax.data import build_data
from ebomlc_jax.data.device import BatchSpec
from ebomlc_jax.data.pipeline import NoisyLabelData
from ebomlc_jax.errors import ConfigError

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
        print(f"warning: {warning}", flush=True)
    spec = batch_spec(config, d0)
    spe = spec.steps_per_epoch
    axis = parallel.DATA_AXIS if config.parallel.mode == "pmap" else None
    method = build_method(config, d0.num_classes, spe, axis, d0.num_noisy)
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
        print(f"resumed from {ckpt.directory} after epoch {start_epoch}", flush=True)

    workdir_path.mkdir(parents=True, exist_ok=True)  # the run really starts here
    (workdir_path / "config.json").write_text(
        json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True)
    )
    many = len(seeds) > 1
    run_dirs = [workdir_path / f"seed_{s}" if many else workdir_path for s in seeds]
    writers = [logs.make_writer(d) for d in run_dirs]
    for d, data in zip(run_dirs, datas, strict=True):
        (d / "noise.json").write_text(json.dumps(data.noise, indent=1))
        print(
            f"{d.name}: {config.data.dataset} |D|={data.num_clean} |D'|={data.num_noisy} "
            f"{config.noise.kind} noise nominal {config.noise.rate:g} realised "
            f"{data.noise['realised_rate']:.4f}",
            flush=True,
        )

    total = config.num_epochs * spe
    progress = logs.Progress(total, start_epoch * spe)
    last_eval = None
    try:
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
                _log_epoch(writer, run_dir, seed_meas, seed_ev, record, epoch, spe, config)
                record["wall_time_s"] += seconds
                record["steps_done"] = step
            mean_clean = float(np.mean(ev["clean_accuracy"]))
            ckpt.save(epoch + 1, state, {"seeds": records}, mean_clean)
            last_eval = ev
            shown = {
                k: float(np.mean(v)) for k, v in meas.items() if k in ("G", "F", "beta", "loss")
            }
            shown.update(
                test=float(np.mean(ev["test_accuracy"])),
                clean=mean_clean,
                **(
                    {"meta": float(np.mean(ev["meta_correction_accuracy"]))}
                    if "meta_correction_accuracy" in ev
                    else {}
                ),
            )
            print(progress.line(epoch + 1, config.num_epochs, step, shown), flush=True)
    finally:  # also on DivergenceError/Ctrl-C: finish the last good epoch's pending save
        ckpt.wait()
        ckpt.close()
        for w in writers:
            w.close()

    summaries = []
    for i, (record, run_dir, seed, data) in enumerate(
        zip(records, run_dirs, seeds, datas, strict=True)
    ):
        if last_eval is None:  # resumed a finished run: report from the saved files
            summaries.append(json.loads((run_dir / "summary.json").read_text()))
            print(f"{run_dir.name}: already finished ({config.num_epochs} epochs)", flush=True)
            print(logs.summary_screen(summaries[-1]), flush=True)
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
            "wall_time_s": record["wall_time_s"],
            "steps_per_sec": record["steps_done"] / max(record["wall_time_s"], 1e-9),
            "realised_noise_rate": data.noise["realised_rate"],
            "num_devices": num_devices,
            "device": jax.devices()[0].device_kind,
            "run_dir": str(run_dir),
            "config": json.loads(config.to_json_best_effort()),
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        summaries.append(summary)
        print(logs.summary_screen(summary), flush=True)
    if config.figures and last_eval is not None:
        from ebomlc_jax.analysis import write_figures  # matplotlib only when asked

        for run_dir in run_dirs:
            for path in write_figures([run_dir], run_dir):
                print(f"wrote {path}", flush=True)
    return summaries if many else summaries[0]


def _log_epoch(writer, run_dir, meas, ev, record, epoch, spe, config) -> None:
    """Train scalars every log_every_steps, the epoch's eval line, the confusion matrix."""
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
        confusion = {
            "epoch": epoch + 1,
            "num_classes": int(ev["meta_confusion"].shape[0]),
            "counts": np.asarray(ev["meta_confusion"]).round().astype(int).tolist(),
        }
        (run_dir / "meta_confusion.json").write_text(json.dumps(confusion))
    writer.write_scalars((epoch + 1) * spe, scalars)
    writer.flush()
