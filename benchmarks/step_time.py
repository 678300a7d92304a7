"""Step time of every method on ResNet-32, CIFAR-shaped batches (100 noisy + 100 clean).

All in one process: every step is compiled and warmed up first, then the methods are timed in
turn, `--repeats` steps each, for `--rounds` rounds (the order reversed every other round), so a
machine whose speed drifts slows every method alike. median_s is over all of a method's timings;
ratio_to_ce is the median over rounds of (its round median / CE's round median); images/s counts
the 200 images of a step.

    python -m benchmarks.step_time --tag cpu --repeats 10
    python -m benchmarks.step_time --tag cpu --methods ce,ebomlc-paper --rounds 8 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from benchmarks import cli, common
from ebomlc_jax import cpu


def batches(num_classes: int, seed: int = 0):
    k = jax.random.split(jax.random.key(seed), 5)
    noisy = {
        "image": jax.random.normal(k[0], (100, 32, 32, 3)),
        "label": jax.random.randint(k[1], (100,), 0, num_classes),
        "true_label": jax.random.randint(k[2], (100,), 0, num_classes),
        "index": jnp.arange(100, dtype=jnp.int32),
    }
    clean = {
        "image": jax.random.normal(k[3], (100, 32, 32, 3)),
        "label": jax.random.randint(k[4], (100,), 0, num_classes),
    }
    return noisy, clean


def prepare(
    key: str, num_classes: int, warmup: int, dtype=None, depth: int = 32
) -> tuple[dict, Callable[[], None]]:
    """Compile one method's step and warm it up: its row so far, and one blocking step."""
    method = common.make_method(key, num_classes, dtype=dtype, depth=depth)
    noisy, clean = batches(num_classes)
    state = method.init(jax.random.key(0), noisy["image"][:1])
    state["step"] = jnp.asarray(common.start_step(key, method), jnp.int32)
    step = jax.jit(method.step, donate_argnums=0)
    t = time.perf_counter()
    compiled = step.lower(state, noisy, clean).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    box = [state]

    def one():
        box[0], meas = compiled(box[0], noisy, clean)
        jax.block_until_ready(meas)

    for _ in range(warmup):
        one()
    row = {
        "method": key,
        "compile_s": compile_s,
        "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
        "peak_memory_bytes_so_far": common.peak_memory_bytes(),
    }
    return row, one


def summarise(row: dict, times: list[list[float]], ce_times: list[list[float]] | None) -> None:
    """Fill a row from its per-round timings; ratios to CE are taken round by round."""
    flat = [t for r in times for t in r]
    row.update(common.summarise_times(flat))
    row["repeats"] = len(times[0])
    row["rounds"] = len(times)
    row["round_median_s"] = [statistics.median(r) for r in times]
    row["images_per_s"] = 200 / row["median_s"]
    row["ratio_to_ce"], row["ratio_to_ce_rounds"] = (
        common.ratio_by_round(row["round_median_s"], [statistics.median(c) for c in ce_times])
        if ce_times
        else (None, None)
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tag", default=None, help="results file tag (default: the backend)")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1, help="times each method is timed in turn")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--methods", default=",".join(common.METHODS))
    ap.add_argument("--dtype", default=None, help="main-model compute dtype, e.g. bfloat16")
    cli.add_depth_argument(ap)
    ap.add_argument(
        "--no-cpu-flags", action="store_true", help="without the XLA:CPU flags (the 'before')"
    )
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    keys = args.methods.split(",")
    unknown = [k for k in keys if k not in common.METHODS]
    if unknown:
        ap.error(f"--methods: unknown {unknown}; allowed values: {', '.join(common.METHODS)}")
    if args.rounds < 1 or args.repeats < 1:
        ap.error(f"--rounds and --repeats must be at least 1, got {args.rounds}, {args.repeats}")
    dtype = jnp.dtype(args.dtype) if args.dtype else None
    rows, steps = [], []
    for k in keys:
        row, one = prepare(k, args.num_classes, args.warmup, dtype, args.depth)
        rows.append(row)
        steps.append(one)
    times = [[] for _ in rows]
    for r in range(args.rounds):
        for i in common.round_order(len(rows), r):
            times[i].append(common.time_calls(steps[i], args.repeats))
        ce = next((times[i] for i, row in enumerate(rows) if row["method"] == "ce"), None)
        for row, t in zip(rows, times, strict=True):
            summarise(row, t, ce)
        # Written after every round, so a run cut short by a timeout keeps what it measured.
        common.write(
            f"step_time_{args.tag or jax.default_backend()}_k{args.num_classes}"
            + cli.depth_suffix(args.depth),
            {
                "benchmark": "step_time",
                "machine": common.machine(),
                "dtype": args.dtype,
                "depth": args.depth,
                "rows": rows,
            },
        )
    print(
        f"{'method':24s} {'s/step':>9s} {'img/s':>8s} {'x CE':>6s} {'compile s':>9s}  x CE by round"
    )
    for r in rows:
        ratio = f"{r['ratio_to_ce']:.2f}" if r["ratio_to_ce"] else "-"
        by_round = " ".join(f"{x:.2f}" for x in r["ratio_to_ce_rounds"] or [])
        print(
            f"{r['method']:24s} {r['median_s']:9.4f} {r['images_per_s']:8.0f} {ratio:>6s} "
            f"{r['compile_s']:9.1f}  {by_round}"
        )
    return 0


if __name__ == "__main__":
    cpu.prepare_process(cpu_flags="--no-cpu-flags" not in sys.argv)  # before JAX starts
    sys.exit(main())
