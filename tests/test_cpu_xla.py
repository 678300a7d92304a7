"""ebomlc_jax.cpu.xla: lax's numbers exactly, canonical convolutions in scans, no recompute,
and the XLA flags (Eigen convolutions) in effect and float32-accurate."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from ebomlc_jax import cpu, models
from ebomlc_jax.cpu import xla as xla_cpu
from ebomlc_jax.cpu.xla import conv_general_dilated, materialize

DN = ("NHWC", "HWIO", "NHWC")
CANONICAL = "dim_labels=b01f_01io->b01f"


def losses(stride):
    pad = [(1, 1), (1, 1)]
    ref = lambda x, w: jnp.sum(  # noqa: E731
        jnp.sin(lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=DN))
    )
    ours = lambda x, w: jnp.sum(  # noqa: E731
        jnp.sin(conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=DN))
    )
    return ref, ours


@pytest.mark.parametrize("stride", [1, 2])
def test_values_and_derivatives_equal_lax(stride):
    with jax.enable_x64():
        k = jax.random.split(jax.random.key(0), 4)
        x = jax.random.normal(k[0], (3, 8, 8, 5), jnp.float64)
        w = jax.random.normal(k[1], (3, 3, 5, 7), jnp.float64)
        tx = jax.random.normal(k[2], x.shape, jnp.float64)
        tw = jax.random.normal(k[3], w.shape, jnp.float64)
        ref, ours = losses(stride)
        close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)  # noqa: E731
        close(ours(x, w), ref(x, w))
        for a, b in zip(jax.grad(ours, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w), strict=True):
            close(a, b)
        close(jax.jvp(ours, (x, w), (tx, tw))[1], jax.jvp(ref, (x, w), (tx, tw))[1])
        # forward-only tangent of the weights (MLC's JVP), and reverse-over-reverse (MLC-D)
        close(
            jax.jvp(lambda w: ours(x, w), (w,), (tw,))[1],
            jax.jvp(lambda w: ref(x, w), (w,), (tw,))[1],
        )
        sq = lambda f: jax.grad(lambda w: jnp.sum(jax.grad(f, 1)(x, w) ** 2))(w)  # noqa: E731
        close(sq(ours), sq(ref))


def test_other_layouts_fall_back_to_lax():
    x, w = jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3))
    got = conv_general_dilated(x, w, (1, 1), "SAME")  # NCHW default, string padding
    np.testing.assert_array_equal(got, lax.conv_general_dilated(x, w, (1, 1), "SAME"))


def test_training_scan_compiles_to_canonical_convolutions_only():
    """In a `lax.scan`, XLA:CPU does not rewrite non-canonical convolutions (jax-ml/jax#12868)."""
    model = models.CifarResNet(4, blocks_per_stage=1, widths=(4, 8), **cpu.resnet_fields())
    x, y = jnp.ones((4, 8, 8, 3)), jnp.arange(4) % 4
    v = model.init(jax.random.key(0), x, train=False)

    def step(params, _):
        def loss(p):
            out, _ = model.apply(
                {"params": p, "batch_stats": v["batch_stats"]}, x, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(out[0], y).mean()

        g = jax.grad(loss)(params)
        return jax.tree.map(lambda a, b: a - 0.1 * b, params, g), None

    hlo = jax.jit(lambda p: lax.scan(step, p, length=2)[0]).lower(v["params"]).compile().as_text()
    assert "conditional" not in hlo  # lax.platform_dependent's branch is resolved when lowering
    convs = re.findall(r"convolution\(.*?dim_labels=\S+", hlo)
    # 5 convolutions: forward and weight gradient of each, input gradient of all but the stem
    assert len(convs) == 5 + 5 + 4
    assert all(CANONICAL in c for c in convs), [c for c in convs if CANONICAL not in c]


def test_materialize_is_exact_in_value_and_gradient():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8)) * 1e30
    x = x.at[0, 0, 0, :2].set(jnp.array([0.0, -0.0]))
    np.testing.assert_array_equal(materialize(x), x)  # bitwise for normal floats; -0.0 == 0.0
    g = jax.grad(lambda x: jnp.sum(jnp.sin(materialize(x))))(x)
    np.testing.assert_array_equal(g, jnp.cos(x))


def max_fusion_operands(blocks_per_stage: int, **fields) -> int:
    model = models.CifarResNet(4, blocks_per_stage=blocks_per_stage, widths=(4, 8), **fields)
    x, y = jnp.ones((4, 8, 8, 3)), jnp.arange(4) % 4
    v = model.init(jax.random.key(0), x, train=False)

    def loss(p):
        out, _ = model.apply({"params": p, "batch_stats": v["batch_stats"]}, x, mutable=True)
        return optax.softmax_cross_entropy_with_integer_labels(out[0], y).mean()

    hlo = jax.jit(jax.grad(loss)).lower(v["params"]).compile().as_text()
    calls = re.findall(r" fusion\((.*?)\), kind=", hlo)
    return max(c.count("%") for c in calls)


def test_residual_stream_is_not_recomputed_in_deeper_nets():
    """Without `materialize`, fusions read every earlier block's outputs: width grows with depth."""
    fields = cpu.resnet_fields()
    assert max_fusion_operands(4, **fields) == max_fusion_operands(2, **fields)
    # The plain model (identity block output) shows the recompute this guards against.
    assert max_fusion_operands(4) > max_fusion_operands(2)


def test_resnet_gradient_is_float32_accurate():
    """The compiled CPU gradient (all three workarounds) against float64: 1e-4 relative per leaf.

    Guards the numbers, not only the speed: `jax.jit(..., compiler_options=
    {"xla_cpu_experimental_ynn_fusion_type": ""})` made a ResNet-32 CE step 20% faster but these
    gradients 0.3% wrong (1.6% at depth 32), so it was not adopted.
    """
    model = models.CifarResNet(10, blocks_per_stage=2, widths=(16, 32, 64), **cpu.resnet_fields())
    x = jax.random.normal(jax.random.key(1), (64, 32, 32, 3))
    y = jnp.arange(64) % 10
    v = model.init(jax.random.key(0), x, train=False)

    def grad(variables, x):
        def loss(p):
            out, _ = model.apply({**variables, "params": p}, x, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(out[0], y).mean()

        return jax.grad(loss)(variables["params"])

    got = jax.jit(grad)(v, x)
    with jax.enable_x64():
        f64 = lambda t: jnp.asarray(np.asarray(t, np.float64))  # noqa: E731
        want = jax.jit(grad)(jax.tree.map(f64, v), f64(x))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            b = np.asarray(b)
            assert np.linalg.norm(np.asarray(a, np.float64) - b) <= 1e-4 * np.linalg.norm(b)


def test_cpu_flags_keep_the_users_values():
    flag = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    assert xla_cpu.with_cpu_flags("") == flag
    assert xla_cpu.with_cpu_flags(" --a=1 ") == f"--a=1 {flag}"
    mine = "--xla_cpu_experimental_ynn_fusion_type=reduce"
    assert xla_cpu.with_cpu_flags(mine) == mine


def test_cpu_flags_took_effect_convolutions_run_outside_ynnpack():
    """conftest sets them as the entry points do; YNNPACK's convolutions use one of the 2 cores."""
    if cpu.accelerator_plugins():
        pytest.skip("a GPU/TPU plugin is installed: set_cpu_flags leaves XLA_FLAGS alone")
    assert xla_cpu.set_cpu_flags()  # JAX has started: True means XLA_FLAGS had them before
    x, w = jnp.ones((32, 16, 16, 16)), jnp.ones((3, 3, 16, 16))  # YNNPACK takes convs this big
    _, loss = losses(stride=1)
    hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
    bodies = dict(re.findall(r"\n%?([\w.\-]+) \([^\n]*\{\n(.*?)\n\}", hlo, re.S))
    ynn = re.findall(r'calls=%?([\w.\-]+)[^\n]*"kind":"__ynn_fusion"', hlo)
    assert not [c for c in ynn if "convolution(" in bodies[c]]
    assert len(re.findall(r"convolution\(", hlo)) == 3  # forward, input and weight gradients


def test_cpu_flags_are_not_set_late_or_for_other_jaxlibs_or_accelerators(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    assert not xla_cpu.set_cpu_flags()  # JAX has started: too late, says so, changes nothing
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    monkeypatch.setattr(xla_cpu.importlib.metadata, "version", lambda _: "0.11.2")
    monkeypatch.setattr(xla_cpu.xla_bridge, "backends_are_initialized", lambda: False)
    assert not xla_cpu.set_cpu_flags()  # XLA aborts on flags it does not know
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    monkeypatch.setattr(xla_cpu.importlib.metadata, "version", lambda _: "0.10.2")
    monkeypatch.setattr(xla_cpu, "accelerator_plugins", lambda: ["jax-cuda12-plugin"])
    assert not xla_cpu.set_cpu_flags()  # GPU/TPU compilers were not checked with them
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=4"
    monkeypatch.setattr(xla_cpu, "accelerator_plugins", lambda: [])
    assert xla_cpu.set_cpu_flags()
    assert os.environ["XLA_FLAGS"] == xla_cpu.with_cpu_flags(
        "--xla_force_host_platform_device_count=4"
    )
