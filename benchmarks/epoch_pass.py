"""The epoch-level passes of the methods that have one (DivideMix's loss pass over D' and GMM fits
before every epoch, GLC's pass over D at its phase boundary), on CIFAR-shaped synthetic data with
ResNet-32, against the method's own step and CE's step timed in the same process.

    python -m benchmarks.epoch_pass --tag cpu --methods dividemix,glc --repeats 3

`pass_s` is the median time of one whole pass (the compiled per-example scan and begin_epoch);
`pass_in_steps` is it in units of the method's step, and `epoch_ratio` what the pass adds to a
490-step epoch of that method.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from benchmarks import cli
from ebomlc_jax import cpu

WITH_PASS = ("dividemix", "glc")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--methods", default=",".join(WITH_PASS))
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--step-repeats", type=int, default=5)
    cli.add_depth_argument(ap)
    return ap


def main(argv=None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    keys = args.methods.split(",")
    if not set(keys) <= set(WITH_PASS) or args.repeats < 1 or args.step_repeats < 1:
        ap.error(f"--methods: allowed values {', '.join(WITH_PASS)}; repeats must be >= 1")
    import jax

    from benchmarks import common, step_time
    from ebomlc_jax import epochs
    from ebomlc_jax.data.device import BatchSpec

    data = common.synthetic_cifar(args.num_classes)
    spec = BatchSpec(data.num_noisy, data.num_clean, 100, 100, True, 4)
    rows = []
    _, ce_step = step_time.prepare("ce", args.num_classes, 2, depth=args.depth)
    for key in keys:
        method = common.make_method(key, args.num_classes, spec.steps_per_epoch, depth=args.depth)
        runner = epochs.Runner(method, spec, [data], [0], pass_batch_size=500)
        state = runner.init_state()
        which = method.epoch_pass(next(e for e in range(1000) if method.epoch_pass(e)))
        hook = runner._hook(which)
        d = runner.data
        t = time.perf_counter()
        state = hook(state, d.shared, d.per_seed, 0)
        jax.block_until_ready(state)
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            state = hook(state, d.shared, d.per_seed, 0)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t)
        _, own_step = step_time.prepare(key, args.num_classes, 2, depth=args.depth)
        own = statistics.median(common.time_calls(own_step, args.step_repeats))
        ce = statistics.median(common.time_calls(ce_step, args.step_repeats))
        pass_s = statistics.median(times)
        row = {
            "method": key,
            "set": which,
            "examples": data.num_noisy if which == "noisy" else data.num_clean,
            "first_pass_s": first,
            "pass_s": pass_s,
            "pass_s_all": times,
            "step_s": own,
            "ce_step_s": ce,
            "pass_in_steps": pass_s / own,
            "epoch_ratio": 1 + pass_s / (spec.steps_per_epoch * own),
        }
        rows.append(row)
        print({k: v for k, v in row.items() if k != "pass_s_all"}, flush=True)
    common.write(
        f"epoch_pass_{args.tag or jax.default_backend()}_k{args.num_classes}"
        + cli.depth_suffix(args.depth),
        {"benchmark": "epoch_pass", "machine": common.machine(), "args": vars(args), "rows": rows},
    )
    return 0


if __name__ == "__main__":
    cpu.prepare_process()  # before JAX starts
    sys.exit(main())
