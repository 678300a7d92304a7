"""Epoch time on CIFAR-shaped synthetic data: on-device scan vs step loop, devices, vmapped seeds.

Each configuration trains one warm-up epoch (compilation); then the configurations are timed in
turn, `--epochs` epochs each, for `--rounds` rounds (the order reversed every other round), so a
machine whose speed drifts slows them alike. epoch_s is the median over rounds; ratio_to_first is
the median over rounds of (its round / the first configuration's round). `--steps` caps an epoch
(0 = the full 490 steps of CIFAR at batch 100).

    python -m benchmarks.epoch_time --tag cpu --steps 10                  # scan vs loop
    python -m benchmarks.epoch_time --tag cpu --steps 5 --rounds 6        # the same, interleaved
    python -m benchmarks.epoch_time --tag cpu --steps 10 --seeds 1,3      # vmapped seeds
    python -m benchmarks.epoch_time --tag cpu-map --steps 10 --seeds 1,3 --seeds-mode map
    python -m benchmarks.epoch_time --tag cpu4 --steps 10 --fake-cpu-devices 4 --devices 1,4
"""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks import cli
from ebomlc_jax import cpu


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--method", default="ebomlc-paper")
    ap.add_argument("--num-classes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs per round")
    ap.add_argument("--rounds", type=int, default=1, help="times each configuration is timed")
    ap.add_argument("--modes", default="scan,loop", help="scan and/or loop (device input)")
    ap.add_argument("--seeds", default="1", help="numbers of parallel seeds to compare, e.g. 1,3")
    ap.add_argument("--seeds-mode", default="vmap", choices=("vmap", "map"), help="parallel.seeds")
    ap.add_argument("--devices", default="1", help="device counts to compare, e.g. 1,4")
    ap.add_argument("--fake-cpu-devices", type=int, default=0)
    cli.add_depth_argument(ap)
    ap.add_argument(
        "--no-cpu-flags", action="store_true", help="without the XLA:CPU flags (the 'before')"
    )
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    if not set(modes) <= {"scan", "loop"}:
        ap.error(f"--modes: {args.modes!r}; allowed values: scan, loop (comma-separated)")
    if min(args.rounds, args.epochs) < 1:
        ap.error(f"--rounds and --epochs must be at least 1, got {args.rounds}, {args.epochs}")
    if args.fake_cpu_devices:  # must precede jax's start
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={args.fake_cpu_devices}"
        )
    import statistics
    import time

    import jax

    from benchmarks import common
    from ebomlc_jax import epochs
    from ebomlc_jax.data.device import BatchSpec

    def write(rows):  # after every configuration and round: a run cut short keeps what it has
        common.write(
            f"epoch_time_{args.tag or jax.default_backend()}_{args.method}"
            + cli.depth_suffix(args.depth),
            {
                "benchmark": "epoch_time",
                "machine": common.machine(),
                "args": vars(args),
                "rows": rows,
            },
        )

    rows, runs = [], []  # runs[i]: [runner, state, per-epoch seconds of each round]
    for n_seeds in map(int, args.seeds.split(",")):
        datas = [common.synthetic_cifar(args.num_classes, seed=s) for s in range(n_seeds)]
        d = datas[0]
        spec = BatchSpec(d.num_noisy, d.num_clean, 100, 100, True, 4, args.steps)
        for n_dev in map(int, args.devices.split(",")):
            for mode in modes:
                method = common.make_method(
                    args.method, args.num_classes, spec.steps_per_epoch, depth=args.depth
                )
                runner = epochs.Runner(
                    method,
                    spec,
                    datas,
                    list(range(n_seeds)),
                    "device",
                    mode == "scan",
                    "jit",
                    n_dev,
                    args.seeds_mode,
                )
                state = runner.init_state()
                t = time.perf_counter()
                state, _ = runner.run_epoch(state, 0)
                jax.block_until_ready(state)
                rows.append(
                    {
                        "mode": mode,
                        "seeds": n_seeds,
                        "seeds_mode": args.seeds_mode,
                        "devices": n_dev,
                        "steps_per_epoch": spec.steps_per_epoch,
                        "first_epoch_s": time.perf_counter() - t,
                    }
                )
                runs.append([runner, state, []])
                write(rows)
    epoch = 1
    for r in range(args.rounds):
        for i in common.round_order(len(runs), r):
            runner, state, per_round = runs[i]
            t = time.perf_counter()
            for e in range(epoch, epoch + args.epochs):
                state, _ = runner.run_epoch(state, e)
            jax.block_until_ready(state)
            per_round.append((time.perf_counter() - t) / args.epochs)
            runs[i][1] = state
        epoch += args.epochs
        first = runs[0][2]
        for row, (_, _, per_round) in zip(rows, runs, strict=True):
            row["epoch_s_rounds"] = per_round
            row["epoch_s"] = statistics.median(per_round)
            row["ratio_to_first"], _ = common.ratio_by_round(per_round, first)
            row["steps_per_s"] = row["steps_per_epoch"] / row["epoch_s"]
            row["seed_steps_per_s"] = row["seeds"] * row["steps_per_s"]
        write(rows)
    print(f"{'mode':5s} {'seeds':>5s} {'dev':>4s} {'epoch s':>9s} {'steps/s':>8s} {'x 1st':>6s}")
    for r in rows:
        print(
            f"{r['mode']:5s} {r['seeds']:5d} {r['devices']:4d} {r['epoch_s']:9.3f} "
            f"{r['steps_per_s']:8.1f} {r['ratio_to_first']:6.2f}"
        )
    return 0


if __name__ == "__main__":
    cpu.prepare_process(cpu_flags="--no-cpu-flags" not in sys.argv)  # before JAX starts
    sys.exit(main())
