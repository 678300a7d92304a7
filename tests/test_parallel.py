"""The same training, computed five ways: scan epoch, step loops (device / NumPy / tf.data input),
4 devices under jit sharding or pmap, and several seeds vmapped into one program; evaluation
by scan and by host loop."""

import functools

import jax
import numpy as np
import pytest
import tiny_config

from ebomlc_jax import epochs, evaluate, parallel, train
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
        setattr(c.method, k, v)
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


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_evaluator_scan_equals_host_loop(seeds):
    """The evaluation scan (the default) against a host loop over the same compiled batches."""
    method, runner = make_runner(seeds=seeds)
    state, _ = runner.run_epoch(runner.init_state(), 0)
    scan = evaluate.Evaluator(method, runner, 100)(state)
    loop = evaluate.Evaluator(method, runner, 100, scan=False)(state)
    assert scan.keys() == loop.keys() >= {"test_accuracy", "clean_loss", "meta_confusion"}
    for k in scan:
        assert np.shape(scan[k])[: len(seeds) - 1] == (2,) * (len(seeds) - 1)
        np.testing.assert_allclose(scan[k], loop[k], rtol=1e-6, err_msg=k)
