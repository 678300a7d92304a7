"""A full training run on CIFAR-shaped synthetic data: epochs + evaluation every epoch.

The training loop of `ebomlc_jax.train` without its logging (so it also runs where clu and
tensorflow are not installed): the on-device epoch, the per-epoch evaluation (test set, clean
set, meta correction over D'), and optionally an orbax checkpoint per epoch. Reports the wall
time including compilation; with `--epochs` < 120 it also extrapolates to 120 epochs from the
steady-state epoch time.

    python -m benchmarks.full_run --epochs 120 --num-classes 100 --seeds 1   # the 5-minute target
    python -m benchmarks.full_run --epochs 5 --seeds 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

from benchmarks import cli
from ebomlc_jax import cpu


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--method", default="ebomlc-paper")
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=120)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--scan", type=int, default=1)
    ap.add_argument("--checkpoint", type=int, default=1)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--steps", type=int, default=0, help="cap an epoch (smoke tests); 0 = 490")
    ap.add_argument("--test-images", type=int, default=10_000, help="fewer for smoke tests")
    cli.add_depth_argument(ap)
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import common
    from ebomlc_jax import checkpoint, epochs, evaluate
    from ebomlc_jax.data.device import BatchSpec

    t_start = time.perf_counter()
    datas = [
        common.synthetic_cifar(args.num_classes, seed=s, n_test=args.test_images)
        for s in range(args.seeds)
    ]
    d = datas[0]
    spec = BatchSpec(d.num_noisy, d.num_clean, 100, 100, True, 4, args.steps)
    method = common.make_method(
        args.method,
        args.num_classes,
        spec.steps_per_epoch,
        jnp.dtype(args.dtype) if args.dtype else None,
        epochs=args.epochs,
        depth=args.depth,
    )
    runner = epochs.Runner(method, spec, datas, list(range(args.seeds)), "device", bool(args.scan))
    evaluator = evaluate.Evaluator(method, runner.data, 500)
    ckpt = checkpoint.Checkpointer(tempfile.mkdtemp(), keep=2) if args.checkpoint else None
    state = runner.init_state()
    t_data = time.perf_counter() - t_start
    epoch_times, t_train = [], time.perf_counter()
    for e in range(args.epochs):
        t = time.perf_counter()
        state, meas = runner.run_epoch(state, e)
        ev = evaluator(state)
        if ckpt:
            ckpt.save(e + 1, state, {"epoch": e + 1}, float(np.mean(ev["clean_accuracy"])))
        epoch_times.append(time.perf_counter() - t)
        if e < 3 or e % 10 == 9:
            loss = "G" if "G" in meas else "loss"  # CE has no lower loss
            print(
                f"epoch {e + 1}: {epoch_times[-1]:.2f} s  {loss} {np.mean(meas[loss]):.3f}",
                flush=True,
            )
    if ckpt:
        ckpt.wait()
    total = time.perf_counter() - t_train
    steady = float(np.median(epoch_times[1:])) if len(epoch_times) > 1 else epoch_times[0]
    record = {
        "benchmark": "full_run",
        "machine": common.machine(),
        "args": vars(args),
        "steps_per_epoch": spec.steps_per_epoch,
        "data_and_init_s": t_data,
        "train_and_eval_s": total,
        "first_epoch_s": epoch_times[0],
        "steady_epoch_s": steady,
        "steps_per_s": spec.steps_per_epoch / steady,
        "extrapolated_120_epochs_s": epoch_times[0] + 119 * steady,
    }
    print({k: v for k, v in record.items() if k not in ("machine", "args")})
    tag = args.tag or jax.default_backend()
    common.write(
        f"full_run_{tag}_{args.method}_k{args.num_classes}_s{args.seeds}_e{args.epochs}"
        + cli.depth_suffix(args.depth),
        record,
    )
    return 0


if __name__ == "__main__":
    cpu.prepare_process(cpu_flags="--no-cpu-flags" not in sys.argv)  # before JAX starts
    sys.exit(main())
