"""Step time of every method on ResNet-32, CIFAR-shaped batches (100 noisy + 100 clean).

All in one process, after compilation; median of repeated timings; images/s counts the 200
images of a step; ratio = step time / CE step time.

    python -m benchmarks.step_time --tag cpu --repeats 10
"""

from __future__ import annotations

if __name__ == "__main__":  # CPU: restart once with huge pages for malloc, before jax loads
    from ebomlc_jax import host

    host.reexec_with_huge_pages()

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import common  # noqa: E402
from ebomlc_jax import xla_cpu  # noqa: E402


def batches(num_classes: int, seed: int = 0):
    k = jax.random.split(jax.random.key(seed), 5)
    noisy = {
        "image": jax.random.normal(k[0], (100, 32, 32, 3)),
        "label": jax.random.randint(k[1], (100,), 0, num_classes),
        "true_label": jax.random.randint(k[2], (100,), 0, num_classes),
    }
    clean = {
        "image": jax.random.normal(k[3], (100, 32, 32, 3)),
        "label": jax.random.randint(k[4], (100,), 0, num_classes),
    }
    return noisy, clean


def measure(key: str, num_classes: int, repeats: int, warmup: int, dtype=None) -> dict:
    method = common.make_method(key, num_classes, dtype=dtype)
    noisy, clean = batches(num_classes)
    state = method.init(jax.random.key(0), noisy["image"][:1])
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
    timing = common.timeit(one, repeats)
    return {
        "method": key,
        "compile_s": compile_s,
        **timing,
        "images_per_s": 200 / timing["median_s"],
        "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
        "peak_memory_bytes_so_far": common.peak_memory_bytes(),
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tag", default=None, help="results file tag (default: the backend)")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--methods", default=",".join(common.METHODS))
    ap.add_argument("--dtype", default=None, help="main-model compute dtype, e.g. bfloat16")
    ap.add_argument(
        "--no-cpu-flags", action="store_true", help="without xla_cpu.CPU_FLAGS (the 'before')"
    )
    return ap


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not args.no_cpu_flags:
        xla_cpu.set_cpu_flags()  # before JAX starts
    dtype = jnp.dtype(args.dtype) if args.dtype else None
    rows = []
    for k in args.methods.split(","):
        rows.append(measure(k, args.num_classes, args.repeats, args.warmup, dtype))
        ce = next((r["median_s"] for r in rows if r["method"] == "ce"), None)
        for r in rows:
            r["ratio_to_ce"] = r["median_s"] / ce if ce else None
        # Written after every method, so a run cut short by a timeout keeps what it measured.
        common.write(
            f"step_time_{args.tag or jax.default_backend()}_k{args.num_classes}",
            {
                "benchmark": "step_time",
                "machine": common.machine(),
                "dtype": args.dtype,
                "rows": rows,
            },
        )
    print(f"{'method':24s} {'s/step':>9s} {'img/s':>8s} {'x CE':>6s} {'compile s':>9s}")
    for r in rows:
        ratio = f"{r['ratio_to_ce']:.2f}" if r["ratio_to_ce"] else "-"
        print(
            f"{r['method']:24s} {r['median_s']:9.4f} {r['images_per_s']:8.0f} {ratio:>6s} "
            f"{r['compile_s']:9.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
