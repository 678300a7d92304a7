"""The same training, computed five ways: scan epoch, step loops (device / NumPy / tf.data input),
4 devices under jit sharding or pmap, and several seeds vmapped into one program; and the
sharding itself."""

import dataclasses
import functools
import re

import jax
import numpy as np
import pytest
import tiny_config

from ebomlc_jax import epochs, parallel, train
from ebomlc_jax.data import build_data
from ebomlc_jax.data.device import BatchSpec

EPOCHS = 2


@functools.cache
def datas(seeds=(0,)):
    c = tiny_config.get_config()
    return [
        build_data(
            "digits",
            seed=s,
            noise_kind="uniform",
            noise_rate=0.6,
            clean_fraction=c.data.clean_fraction,
        )
        for s in seeds
    ]


def make_runner(
    name="ebomlc",
    seeds=(0,),
    mode="jit",
    devices=1,
    input="device",
    scan=True,
    seeds_mode="vmap",
    **method,
):
    """The tiny config's method and epoch runner."""
    c = tiny_config.get_config()
    c.method.name = name
    for k, v in method.items():
        c.method[name][k] = v
    c.data.clean_batch_size = 16  # halves of 8: two examples per device on 4 devices
    d = datas(seeds)
    spec = BatchSpec(d[0].num_noisy, d[0].num_clean, 32, 16, True, 1, c.steps_per_epoch)
    axis = parallel.DATA_AXIS if mode == "pmap" else None
    m = train.build_method(c, d[0].num_classes, spec.steps_per_epoch, axis)
    return m, epochs.Runner(m, spec, d, list(seeds), input, scan, mode, devices, seeds_mode)


def run(*args, **kwargs):
    """Parameters and per-step measurements after EPOCHS epochs of the tiny config."""
    _, runner = make_runner(*args, **kwargs)
    state = runner.init_state()
    trace = []
    for e in range(EPOCHS):
        state, meas = runner.run_epoch(state, e)
        trace.append(meas)
    return jax.device_get(state), trace


def assert_close(a, b, rtol=1e-5, atol=1e-6):
    """Parameters within 1e-5; measurements within 1e-4 relative / 1e-5 absolute (beta and Q
    are differences of nearly equal numbers, so reduction order shows more there)."""
    (sa, ma), (sb, mb) = a, b
    for x, y in zip(
        jax.tree.leaves(sa["main"]) + jax.tree.leaves(sa.get("meta", {})),
        jax.tree.leaves(sb["main"]) + jax.tree.leaves(sb.get("meta", {})),
        strict=True,
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)
    for ea, eb in zip(ma, mb, strict=True):
        for k in ea:
            np.testing.assert_allclose(ea[k], eb[k], rtol=10 * rtol, atol=10 * atol, err_msg=k)


@functools.cache
def reference(name="ebomlc"):
    return run(name)


def test_scan_epoch_equals_step_loops():
    ref = reference()
    assert_close(run(scan=False), ref)
    assert_close(run(input="host"), ref)
    assert_close(run(input="tf_data"), ref)


@pytest.mark.parametrize("name", ["ebomlc", "mlc"])
def test_four_devices_equal_one(name):
    assert jax.device_count() >= 4
    assert_close(run(name, devices=4), reference(name))


def spying(method, seen):
    """`method` whose step first records the sharding of its batches' images (at compile time)."""

    class Spy(type(method)):
        def step(self, state, noisy, clean):
            for name, batch in (("noisy", noisy), ("clean", clean)):
                jax.debug.inspect_array_sharding(
                    batch["image"],
                    callback=lambda s, name=name, x=batch["image"]: seen.append(
                        (name, s.shard_shape(x.shape), x.shape)
                    ),
                )
            return super().step(state, noisy, clean)

    return Spy(**{f.name: getattr(method, f.name) for f in dataclasses.fields(method)})


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_each_of_four_devices_steps_on_a_quarter_of_every_batch(scan):
    """Not only the numbers of 4 devices equal one's: inside the jitted step each device holds
    1/4 of the noisy and of the clean batch, and the compiled program convolves local batches."""
    method, plain = make_runner()
    seen = []
    runner = epochs.Runner(spying(method, seen), plain.spec, datas(), [0], "device", scan, "jit", 4)
    state = runner.init_state()
    runner.run_epoch(state, 0)
    assert {name for name, _, _ in seen} == {"noisy", "clean"}
    for name, local, full in seen:
        assert local == (full[0] // 4, *full[1:]), (name, local, full)
    if scan:
        d = runner.data
        hlo = (
            runner._scan_steps.lower(state, d.shared, d.per_seed, d.keys, 0, 0).compile().as_text()
        )
        # Forward convolutions of the images (NHWC, 1 input channel): per-device batches only.
        batches = {int(m) for m in re.findall(r"f32\[(\d+),8,8,4\]\S* convolution\(", hlo)}
        assert batches and max(batches) <= 32 // 4, batches


def test_pmap_equals_jit_sharding():
    sharded = run(devices=4, scan=False)
    assert_close(run(mode="pmap", devices=4), sharded)
    assert_close(sharded, reference())


def test_joint_lower_pass_on_four_devices_equals_two_passes_on_one():
    """Per-batch BN statistics of the one-pass G stay global under jit sharding and pmap."""
    assert_close(run(devices=4, joint_lower_pass=True), reference())
    assert_close(run(mode="pmap", devices=4, joint_lower_pass=True), reference())


@pytest.mark.parametrize("seeds_mode", ["vmap", "map"])
def test_vmapped_seeds_equal_separate_runs(seeds_mode):
    state, trace = run(seeds=(0, 1), seeds_mode=seeds_mode)
    for i, seed in enumerate((0, 1)):
        alone = run(seeds=(seed,))
        mine = (
            jax.tree.map(lambda x, i=i: x[i], state),
            [{k: v[i] for k, v in m.items()} for m in trace],
        )
        assert_close(mine, alone)
