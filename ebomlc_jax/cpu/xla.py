"""XLA:CPU workarounds for convolutional nets: CPU only, faster there.

The run path hands `Conv` (1) and `materialize` (2) to the ResNet as its `conv` and
`block_output` fields; the model itself never imports them. 1 and 2 give the same numbers (the
digits demo ended bitwise where it did without them); 3 moves float32 rounding only. Other
platforms get lax's convolution, no identity product, no flag.

1. `conv_general_dilated`: a 2-D NHWC convolution whose derivatives XLA:CPU can run with its
convolution library inside loops. XLA:CPU only maps a convolution onto its fast kernels when
the dimension numbers are canonical (input NHWC, kernel HWIO, output NHWC). JAX's transpose
rules produce a weight gradient with batch and feature swapped and an input gradient with the
kernel's I/O swapped; XLA rewrites those into canonical form with transposes, but only in the
entry computation (jax-ml/jax#12868), so inside `lax.scan` (the on-device epoch) they ran as
naive loops, ~35x slower per step. Here the JVP is written with explicit transposes chosen so
that JAX's own transposes of it are already canonical, in and out of loops. Forward-mode (MLC's
JVP) and higher derivatives keep working because this is a `custom_jvp`, not a `custom_vjp`.

2. `materialize`: XLA:CPU fuses cheap elementwise producers into every consumer, so a residual
stream (relu(bn(conv) + shortcut), block after block) is recomputed from all earlier blocks'
convolution outputs in each consumer, including the weight-gradient transposes, which read it
in transposed (cache-hostile) order: 60% of a ResNet-32 step on 2 cores. `optimization_barrier`
is expanded before fusion, so it does not stop this; an identity matrix product does (dots are
never fused into their consumers). `lax.platform_dependent` picks the branch when lowering.

3. `set_cpu_flags`: XLA flags, set before JAX starts (`ebomlc_jax.cpu.prepare_process` in the
entry points, `ebomlc_jax.cpu.prepare` in library code, and the tests). In jaxlib 0.10 XLA:CPU
runs convolutions through YNNPACK on one thread: a ResNet-32
3x3 convolution of 200 images takes 10.8 ms on 2 cores and on 1, against 7.5 ms with XLA's
Eigen convolutions, which use both. Handing convolutions back to Eigen made the CE step 29%
faster (1.63 -> 1.15 s), and the gradients stay within float32 rounding of float64
(`tests/test_cpu_xla.py`). Only through `XLA_FLAGS`: the same setting as a per-jit
`compiler_options` compiled gradients 1e-3 off float64. Not set: the concurrency-optimized
scheduler (another ~5%), because TensorFlow's XLA, also loaded here, aborts on that flag.

"""

import functools
import importlib.metadata
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from jax import lax
from jax._src import xla_bridge  # no public API tells whether JAX has started its backends
from jax.custom_derivatives import SymbolicZero

from ebomlc_jax.cpu import accelerator_plugins

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """`lax.conv_general_dilated` (drop-in for `nn.Conv`); canonical derivatives on CPU."""
    plain = (
        lhs.ndim == 4
        and isinstance(padding, Sequence)
        and not isinstance(padding, str)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and _is_nhwc(lhs.ndim, dimension_numbers)
    )
    as_lax = functools.partial(
        lax.conv_general_dilated,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count,
        precision=precision,
        preferred_element_type=preferred_element_type,
    )
    if not plain:
        return as_lax(lhs, rhs)
    strides = tuple(int(s) for s in window_strides)
    pads = tuple(tuple(int(p) for p in pair) for pair in padding)

    def canonical(x, w):
        return _conv(x, w, strides, pads, precision)

    # GPUs keep lax's rule: cuDNN has its own weight-gradient kernels (and our GPU timings were
    # taken with it). The branch is chosen when lowering; the compiled program has no conditional.
    return lax.platform_dependent(lhs, rhs, cpu=canonical, default=as_lax)


# flax's convolution with the CPU-friendly derivatives (`CifarResNet(conv=Conv)`).
Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)


def _is_nhwc(ndim: int, dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False  # lax's default is NCHW
    wanted = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, _NHWC)
    given = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    return given == wanted


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _conv(x: jax.Array, w: jax.Array, strides, padding, precision) -> jax.Array:
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=_NHWC, precision=precision
    )


def _conv_jvp(strides, padding, precision, primals, tangents):
    x, w = primals
    dx, dw = tangents
    y = _conv(x, w, strides, padding, precision)
    terms = []
    if not isinstance(dx, SymbolicZero):
        # Kernel held as [kh, kw, O, I]: the transpose (input gradient) sees it as HWIO.
        terms.append(
            lax.conv_general_dilated(
                dx,
                jnp.swapaxes(w, 2, 3),
                strides,
                padding,
                dimension_numbers=("NHWC", "HWOI", "NHWC"),
                precision=precision,
            )
        )
    if not isinstance(dw, SymbolicZero):
        # Input held as [C, H, W, N], kernel as [I, kh, kw, O], output as [H, W, N, O]: the
        # transpose (weight gradient) is then input "NHWC" = [C, H, W, N] with N as the feature
        # dimension, kernel "HWIO" = [H, W, N, O], output [I, kh, kw, O]: all canonical.
        dy_w = lax.conv_general_dilated(
            jnp.transpose(x, (3, 1, 2, 0)),
            jnp.transpose(dw, (2, 0, 1, 3)),
            strides,
            padding,
            dimension_numbers=("CHWN", "IHWO", "HWNC"),
            precision=precision,
        )
        terms.append(jnp.transpose(dy_w, (2, 0, 1, 3)))
    if not terms:
        return y, jnp.zeros_like(y)  # defensive: JAX calls the rule with some tangent
    return y, functools.reduce(jnp.add, terms)


_conv.defjvp(_conv_jvp, symbolic_zeros=True)


def materialize(x: jax.Array) -> jax.Array:
    """`x`, computed once and stored on CPU (so consumers do not each recompute its producers).

    The product with an identity matrix is exact for normal floats (one product with 1 plus
    zeros; -0.0 becomes 0.0 and subnormals flush to zero) and cheap next to the recompute it
    removes (ResNet-32 CE step 1.18 s -> 0.87 s); its transpose materializes the cotangent too.
    """

    def by_identity(x):
        eye = jnp.eye(x.shape[-1], dtype=x.dtype)
        return jnp.einsum("...c,cd->...d", x, eye, precision=lax.Precision.HIGHEST)

    return lax.platform_dependent(x, cpu=by_identity, default=lambda x: x)


# Verified with jaxlib 0.10 (requirements.txt); XLA aborts the process on a flag it does not know,
# so other versions get none of them, and neither do machines with a GPU or TPU plugin (whose
# compilers we did not check and which have no use for them).
CPU_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "-individual_convolution"}
FLAGS_JAXLIB = "0.10."


def with_cpu_flags(xla_flags: str) -> str:
    """`xla_flags` plus each of CPU_FLAGS that it does not set already (the user's value wins)."""
    given = {f.split("=", 1)[0].lstrip("-") for f in xla_flags.split()}
    extra = [f"--{k}={v}" for k, v in CPU_FLAGS.items() if k not in given]
    return " ".join([xla_flags.strip(), *extra]).strip()


def set_cpu_flags() -> bool:
    """Add CPU_FLAGS to `XLA_FLAGS` (XLA reads it once, when JAX starts); True if they now apply.

    They only change how XLA:CPU compiles; GPU and TPU machines (a plugin installed) get none.
    """
    jaxlib = importlib.metadata.version("jaxlib")
    if not jaxlib.startswith(FLAGS_JAXLIB):
        logging.info(
            "XLA:CPU flags not set: verified with jaxlib %sx, not %s", FLAGS_JAXLIB, jaxlib
        )
        return False
    plugins = accelerator_plugins()
    if plugins:
        logging.info("XLA:CPU flags not set: accelerator plugins installed (%s)", plugins)
        return False
    current = os.environ.get("XLA_FLAGS", "")
    wanted = with_cpu_flags(current)
    if not xla_bridge.backends_are_initialized():
        os.environ["XLA_FLAGS"] = wanted
        return True
    if wanted == current:
        return True  # set before JAX started
    logging.warning(
        "XLA:CPU flags not set: JAX has already started. For fast CPU convolutions, call "
        "ebomlc_jax.cpu.prepare() before the first JAX computation."
    )
    return False
