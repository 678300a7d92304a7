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
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ebomlc_jax import checkpoint, epochs, evaluate, logs, methods, models, parallel, validate
from ebomlc_jax.data import build_data
from ebomlc_jax.data.device import BatchSpec
from ebomlc_jax.data.pipeline import check_batch_size
from ebomlc_jax.errors import ConfigError


class DivergenceError(RuntimeError):
    """A loss became NaN or Inf; the run stopped without saving the bad state."""


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """Piecewise-constant main learning rate: x decay_factor at each of `optim.decay_epochs`."""
    return optax.piecewise_constant_schedule(
        config.optim.lr,
        {e * steps_per_epoch: config.optim.decay_factor for e in config.optim.decay_epochs},
    )


def build_method(
    config: ml_collections.ConfigDict,
    num_classes: int,
    steps_per_epoch: int,
    axis_name: str | None = None,
) -> methods.Method:
    """The configured method with its models, optimisers and hyperparameters."""
    m, mc = config.method, config.model
    main = models.CifarResNet(
        num_classes,
        mc.blocks_per_stage,
        tuple(mc.widths),
        jnp.dtype(mc.dtype),
        bn_axis_name=axis_name,
    )
    meta = models.MetaNet(
        num_classes,
        mc.meta_embed_dim,
        mc.meta_hidden_dim,
        mc.meta_dropout,
        mc.meta_batch_norm,
        axis_name=axis_name,
    )
    common = dict(
        main_model=main,
        meta_model=None if m.name == "ce" else meta,
        lr_schedule=lr_schedule(config, steps_per_epoch),
        momentum=config.optim.momentum,
        weight_decay=config.optim.weight_decay,
        meta_lr=config.optim.meta_lr,
        clean_in_lower_loss=config.data.clean_in_lower_loss,
        joint_lower_pass=m.joint_lower_pass,
        axis_name=axis_name,
    )
    extra: dict[str, Any] = {}
    if m.name == "ebomlc":
        q_delta = m.q_as_optimizer_delta
        extra = dict(
            variant=m.variant,
            rho=m.rho,
            xi=m.xi,
            delta=m.delta,
            keep_inner_step=m.keep_inner_step,
            # The released code takes this branch whenever dataset != "cifar10".
            q_as_optimizer_delta=config.data.dataset != "cifar10" if q_delta is None else q_delta,
        )
    elif m.name == "mlc_d":
        extra = dict(k=m.k, delta=m.mlcd_delta)
    return methods.create(m.name, **common, **extra)


def _check_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Write config.json on the first run; refuse to resume under a different config."""
    path = workdir / "config.json"
    current = json.loads(config.to_json_best_effort())
    if path.exists():
        saved = json.loads(path.read_text())
        if saved != current and not config.resume_with_changed_config:
            diffs = _diff(saved, current)
            raise ConfigError(
                f"workdir {workdir} holds a run with a different config; differing fields:\n  "
                + "\n  ".join(diffs)
                + "\nUse another --workdir, or pass --config.resume_with_changed_config=True "
                "to resume it anyway."
            )
        if saved == current:
            return
    path.write_text(json.dumps(current, indent=2, sort_keys=True))


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
    workdir_path.mkdir(parents=True, exist_ok=True)
    _check_workdir_config(workdir_path, config)

    seeds = [config.seed + i for i in range(config.num_parallel_seeds)]
    datas = [
        build_data(
            config.data.dataset,
            seed=s,
            noise_kind=config.noise.kind,
            noise_rate=config.noise.rate,
            clean_fraction=config.data.clean_fraction,
            includes_true_class=config.noise.uniform_includes_true_class,
            data_dir=config.data.data_dir or None,
            download=config.data.download,
        )
        for s in seeds
    ]
    d0 = datas[0]
    check_batch_size(config.data.batch_size, d0.num_noisy, "data.batch_size")
    check_batch_size(config.data.clean_batch_size, d0.num_clean, "data.clean_batch_size")
    num_devices = parallel.device_count(config.parallel.num_devices or None)
    halves = config.data.clean_in_lower_loss and config.method.name != "ce"
    if num_devices > 1:
        parallel.check_divisible(
            config.data.batch_size, config.data.clean_batch_size, halves, num_devices
        )
    spec = BatchSpec(
        d0.num_noisy,
        d0.num_clean,
        config.data.batch_size,
        config.data.clean_batch_size,
        config.data.augment,
        config.data.augment_pad,
        config.steps_per_epoch,
    )
    spe = spec.steps_per_epoch
    axis = parallel.DATA_AXIS if config.parallel.mode == "pmap" else None
    method = build_method(config, d0.num_classes, spe, axis)
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
    )
    evaluator = evaluate.Evaluator(
        method, runner, config.eval.batch_size, config.eval.meta_correction
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
            "variant": config.method.variant if config.method.name == "ebomlc" else None,
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
