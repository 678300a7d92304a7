"""The math of EBOMLC (Eq. 2-14), MLC-D (Algorithm 1) and MLC's one-step hypergradient.

Pure and model-agnostic: models enter as functions, nothing reads config or global state, and
everything is jit-able. Public contract (docs/design.md):

    main_fn(main_params, images) -> (logits [B, K], features [B, D])
    meta_fn(meta_params, features, labels) -> probabilities [B, K]
    batch = {"image": [B, ...], "label": int [B]}

Gradients never flow into `features` before `meta_fn` (h is the main model's frozen feature).
First order only: grad Q is a difference of two gradients (Lemma 2); the one second-order
quantity, MLC's hypergradient, is one JVP of the main network plus one VJP of the meta network.

The methods compose the same building blocks through *objectives*, `(main, meta) -> (loss, aux)`,
built by `lower_objective` / `upper_objective` from an `apply` function that may also return an
aux value (the BatchNorm statistics update), so the loss formulas exist once. A `joint` function
lets G's noisy and clean batches share one pass of the network.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
Batch = Mapping[str, jax.Array]
Pair = tuple[PyTree, PyTree]  # (main block, meta block)
MainFn = Callable[[PyTree, jax.Array], tuple[jax.Array, jax.Array]]
MetaFn = Callable[[PyTree, jax.Array, jax.Array], jax.Array]
# apply(main_params, images) -> (logits, features, aux): a MainFn that also returns a side output.
MainApply = Callable[[PyTree, jax.Array], tuple[jax.Array, jax.Array, Any]]
# joint(main_params, images, clean_images) -> (logits, features, aux, clean_logits): both batches
# in one pass of the network, each normalised as if alone (e.g. BatchNorm statistics per batch).
JointApply = Callable[[PyTree, jax.Array, jax.Array], tuple[jax.Array, jax.Array, Any, jax.Array]]
Objective = Callable[[PyTree, PyTree], tuple[jax.Array, Any]]


# ----------------------------------------------------------------------------- tree arithmetic
def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """<a, b> summed over all leaves."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def tree_sq_norm(a: PyTree) -> jax.Array:
    """||a||^2 summed over all leaves."""
    return tree_vdot(a, a)


def tree_axpy(alpha: jax.Array | float, x: PyTree, y: PyTree) -> PyTree:
    """alpha * x + y, leafwise."""
    return jax.tree.map(lambda u, v: alpha * u + v, x, y)


def sgd_step(params: PyTree, grads: PyTree, lr: jax.Array | float) -> PyTree:
    """params - lr * grads: the plain inner step of Algorithms 1-2."""
    return tree_axpy(-lr, grads, params)


# ----------------------------------------------------------------------------- losses
def cross_entropies(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Hard-label cross-entropy of each example, [B] (in float32 or wider)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.result_type(logits, jnp.float32)))
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean hard-label cross-entropy (Eq. 2 per batch)."""
    return jnp.mean(cross_entropies(logits, labels))


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean soft-label cross-entropy -sum_k t_k log softmax(z)_k (the loss inside Eq. 3)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.result_type(logits, jnp.float32)))
    return -jnp.mean(jnp.sum(targets * logp, axis=-1))


def mixture_nll(
    logits: jax.Array, meta_probs: jax.Array, labels: jax.Array, rho: jax.Array | float
) -> jax.Array:
    """Eq. 9 per batch: -log(rho * softmax(f(x))_y + (1 - rho) * g(h(x), y)_y), in log space."""
    logp_main = jnp.take_along_axis(
        jax.nn.log_softmax(logits.astype(jnp.result_type(logits, jnp.float32))),
        labels[:, None],
        axis=-1,
    )[:, 0]
    p_meta = jnp.take_along_axis(meta_probs, labels[:, None], axis=-1)[:, 0]
    # log p with p floored at the dtype's smallest normal number: a meta probability that
    # underflows to 0 gives a finite value and gradient (1/p would be inf, times 0: NaN).
    logp_meta = jnp.log(jnp.maximum(p_meta, jnp.finfo(p_meta.dtype).tiny))
    # rho = 1 makes the second term log(0) = -inf and logaddexp returns the first term exactly.
    log_mix = jnp.logaddexp(jnp.log(rho) + logp_main, jnp.log1p(-rho) + logp_meta)
    return -jnp.mean(log_mix)


# ----------------------------------------------------------------------------- objectives
def with_aux(main_fn: MainFn) -> MainApply:
    """Adapt a contract `main_fn` to a `MainApply` with no side output."""
    return lambda params, images: (*main_fn(params, images), None)


def lower_objective(
    batch: Batch,
    apply: MainApply,
    meta_fn: MetaFn,
    clean_batch: Batch | None = None,
    joint: JointApply | None = None,
) -> Objective:
    """G of Eq. 3 on `batch`; with `clean_batch`, its hard-label CE is mixed in by batch size.

    The mixed form is the released code's lower loss (docs/reference_notes.md, section 4, item
    6). aux: the side output of the pass over `batch` ("apply") and the meta model's soft labels
    ("targets"). With `joint`, both batches go through the network in one pass instead of two.
    """

    def objective(main_params: PyTree, meta_params: PyTree) -> tuple[jax.Array, Any]:
        if clean_batch is not None and joint is not None:
            logits, features, aux, clean_logits = joint(
                main_params, batch["image"], clean_batch["image"]
            )
        else:
            logits, features, aux = apply(main_params, batch["image"])
            if clean_batch is not None:
                clean_logits = apply(main_params, clean_batch["image"])[0]
        targets = meta_fn(meta_params, jax.lax.stop_gradient(features), batch["label"])
        loss = soft_cross_entropy(logits, targets)
        if clean_batch is not None:
            n, m = batch["label"].shape[0], clean_batch["label"].shape[0]
            loss = (n * loss + m * cross_entropy(clean_logits, clean_batch["label"])) / (n + m)
        return loss, {"apply": aux, "targets": targets}

    return objective


def upper_objective(
    batch: Batch,
    apply: MainApply,
    meta_fn: MetaFn | None,
    rho: jax.Array | float = 1.0,
    mixture: Callable = mixture_nll,
) -> Objective:
    """F of Eq. 9 (mixture of probabilities) on a clean batch; `meta_fn=None` gives Eq. 2.

    `mixture(logits, meta_probs, labels, rho)` is the loss; the released code's variant passes
    its logit/probability mix here.
    """

    def objective(main_params: PyTree, meta_params: PyTree) -> tuple[jax.Array, Any]:
        logits, features, aux = apply(main_params, batch["image"])
        if meta_fn is None:
            return cross_entropy(logits, batch["label"]), {"apply": aux}
        meta_probs = meta_fn(meta_params, jax.lax.stop_gradient(features), batch["label"])
        return mixture(logits, meta_probs, batch["label"], rho), {"apply": aux}

    return objective


def value_and_grads(
    objective: Objective, main_params: PyTree, meta_params: PyTree
) -> tuple[jax.Array, Any, Pair]:
    """(loss, aux, (grad_main, grad_meta)) of an objective."""
    (loss, aux), grads = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
        main_params, meta_params
    )
    return loss, aux, grads


def main_grad(objective: Objective, main_params: PyTree, meta_params: PyTree) -> PyTree:
    """grad_w of an objective (the meta block is not differentiated)."""
    return jax.grad(lambda w: objective(w, meta_params)[0])(main_params)


# ----------------------------------------------------------------------------- contract: losses
def lower_loss(
    main_params: PyTree, meta_params: PyTree, batch: Batch, main_fn: MainFn, meta_fn: MetaFn
) -> jax.Array:
    """G(w, alpha), Eq. 3: soft-label CE of f_w(x') against g_alpha(h(x'), y')."""
    return lower_objective(batch, with_aux(main_fn), meta_fn)(main_params, meta_params)[0]


def upper_loss(
    main_params: PyTree,
    meta_params: PyTree,
    batch: Batch,
    main_fn: MainFn,
    meta_fn: MetaFn,
    rho: jax.Array | float,
) -> jax.Array:
    """F(w, alpha), Eq. 9: -log of the rho-mixture of main and meta probabilities (rho=1: Eq. 2)."""
    return upper_objective(batch, with_aux(main_fn), meta_fn, rho)(main_params, meta_params)[0]


# ----------------------------------------------------------------------------- value gap
def one_step_gap(
    lower: Objective,
    main_params: PyTree,
    meta_params: PyTree,
    lr: jax.Array | float,
    steps: int = 1,
    inner_step: Callable[[PyTree, PyTree], PyTree] | None = None,
    lower_at_inner: Objective | None = None,
) -> tuple[jax.Array, Pair, dict]:
    """Q = G(w) - G(w_k) (Eq. 8 for k=1, Algorithm 1 for k>1) and grad Q = grad G(w) - grad G(w_k).

    w_k is `steps` inner steps of G from w on the same batch, held constant (no second order).
    `inner_step(w, grad)` defaults to plain SGD with `lr`; `lower_at_inner` (default `lower`)
    evaluates G at w_k, so a method can give it its own dropout mask. The info dict holds
    G, G_inner, the inner parameters w_k, grad G(w) and both aux outputs.
    """
    step = inner_step or (lambda w, g: sgd_step(w, g, lr))
    g0, aux0, grads0 = value_and_grads(lower, main_params, meta_params)
    inner = step(main_params, grads0[0])
    for _ in range(steps - 1):
        inner = step(inner, main_grad(lower, inner, meta_params))
    inner = jax.lax.stop_gradient(inner)
    gk, auxk, gradsk = value_and_grads(lower_at_inner or lower, inner, meta_params)
    grad_q = jax.tree.map(jnp.subtract, grads0, gradsk)
    info = {
        "G": g0,
        "G_inner": gk,
        "inner_params": inner,
        "grad_G": grads0,
        "aux": aux0,
        "aux_inner": auxk,
    }
    return g0 - gk, grad_q, info


def value_gap(
    main_params: PyTree,
    meta_params: PyTree,
    batch: Batch,
    main_fn: MainFn,
    meta_fn: MetaFn,
    lr: jax.Array | float,
) -> jax.Array:
    """Q(w, alpha), Eq. 8: G(w) - G(w1), w1 = w - lr grad_w G(w).

    Differentiable: jax.grad gives the paper's first-order grad Q = grad G(w) - grad G(w1) for
    both blocks (w1 held constant, Lemma 2), through a custom VJP.
    """
    return _value_gap(main_params, meta_params, batch, lr, main_fn, meta_fn)


def _value_gap_fwd(main_params, meta_params, batch, lr, main_fn, meta_fn):
    lower = lower_objective(batch, with_aux(main_fn), meta_fn)
    q, grad_q, _ = one_step_gap(lower, main_params, meta_params, lr)
    return q, (grad_q, batch, lr)


def _value_gap_bwd(main_fn, meta_fn, residuals, cotangent):
    (grad_main, grad_meta), batch, lr = residuals
    scale = lambda t: jax.tree.map(lambda x: cotangent * x, t)  # noqa: E731
    return scale(grad_main), scale(grad_meta), None, jnp.zeros_like(lr)


def _value_gap_impl(main_params, meta_params, batch, lr, main_fn, meta_fn):
    lower = lower_objective(batch, with_aux(main_fn), meta_fn)
    inner = sgd_step(main_params, main_grad(lower, main_params, meta_params), lr)
    return lower(main_params, meta_params)[0] - lower(inner, meta_params)[0]


_value_gap = jax.custom_vjp(_value_gap_impl, nondiff_argnums=(4, 5))
_value_gap.defvjp(_value_gap_fwd, _value_gap_bwd)


# ----------------------------------------------------------------------------- dynamic barrier
def barrier_coefficient(
    grad_F: Pair, grad_Q: Pair, delta: jax.Array | float, *, eps: float | None = None
) -> jax.Array:
    """beta-bar, Eq. 11: max(delta - <grad_w F, grad_w Q> / ||grad Q||^2, 0).

    ||grad Q||^2 runs over both blocks. The denominator is ||grad Q||^2 + eps with eps the
    smallest normal number of its dtype by default: exact to rounding whenever grad Q != 0, and
    beta-bar = max(delta, 0) (finite) when grad Q = 0. With grad_F = (grad_w F, 0) this is
    Eq. 7's beta with phi = delta ||grad Q||^2.
    """
    sq = tree_sq_norm(grad_Q)
    eps = jnp.finfo(sq.dtype).tiny if eps is None else eps
    return jnp.maximum(delta - tree_vdot(grad_F[0], grad_Q[0]) / (sq + eps), 0.0)


def barrier_direction(
    upper: Objective,
    lower: Objective,
    main_params: PyTree,
    meta_params: PyTree,
    *,
    delta: jax.Array | float,
    xi: jax.Array | float,
    lr: jax.Array | float,
    steps: int = 1,
    lower_at_inner: Objective | None = None,
) -> tuple[Pair, dict]:
    """grad F + xi * beta-bar * grad Q (Eq. 12-14) for any upper/lower objectives.

    EBOMLC: mixture F, steps=1, xi in (0,1). MLC-D: plain F (so grad_alpha F = 0), steps=k, xi=1.
    """
    f, aux_f, grad_f = value_and_grads(upper, main_params, meta_params)
    q, grad_q, info = one_step_gap(
        lower, main_params, meta_params, lr, steps, lower_at_inner=lower_at_inner
    )
    beta = barrier_coefficient(grad_f, grad_q, delta)
    direction = jax.tree.map(lambda gf, gq: gf + xi * beta * gq, grad_f, grad_q)
    aux = {
        **info,
        "F": f,
        "aux_upper": aux_f,
        "Q": q,
        "beta": beta,
        "grad_F_norm": jnp.sqrt(tree_sq_norm(grad_f)),
        "grad_Q_norm": jnp.sqrt(tree_sq_norm(grad_q)),
        "alignment": tree_vdot(grad_f[0], grad_q[0]),
    }
    return direction, aux


def ebomlc_direction(
    main_params: PyTree,
    meta_params: PyTree,
    noisy_batch: Batch,
    clean_batch: Batch,
    main_fn: MainFn,
    meta_fn: MetaFn,
    *,
    rho: jax.Array | float,
    delta: jax.Array | float,
    xi: jax.Array | float,
    lr: jax.Array | float,
) -> tuple[Pair, dict]:
    """EBOMLC direction, Eq. 12-14: (grad_w F + xi beta grad_w Q, grad_a F + xi beta grad_a Q).

    aux: beta (beta-bar before xi), G, F, Q, G_inner, grad norms, inner_params (w1).
    """
    apply = with_aux(main_fn)
    return barrier_direction(
        upper_objective(clean_batch, apply, meta_fn, rho),
        lower_objective(noisy_batch, apply, meta_fn),
        main_params,
        meta_params,
        delta=delta,
        xi=xi,
        lr=lr,
    )


def mlcd_direction(
    main_params: PyTree,
    meta_params: PyTree,
    noisy_batch: Batch,
    clean_batch: Batch,
    main_fn: MainFn,
    meta_fn: MetaFn,
    *,
    delta: jax.Array | float,
    lr: jax.Array | float,
    k: int,
) -> tuple[Pair, dict]:
    """MLC-D direction, Algorithm 1: (grad_w F + beta grad_w Q, beta grad_a Q), Eq. 6-7.

    k plain SGD steps of G on the same noisy batch; Q = G(w) - G(w_k); F = plain CE (Eq. 2).
    """
    apply = with_aux(main_fn)
    return barrier_direction(
        upper_objective(clean_batch, apply, None),
        lower_objective(noisy_batch, apply, meta_fn),
        main_params,
        meta_params,
        delta=delta,
        xi=1.0,
        lr=lr,
        steps=k,
    )


# ----------------------------------------------------------------------------- MLC hypergradient
def unrolled_hypergradient(
    upper: Objective,
    lower: Objective,
    main_params: PyTree,
    meta_params: PyTree,
    *,
    lr: jax.Array | float,
    lookahead_shift: PyTree | None = None,
) -> tuple[PyTree, dict]:
    """d/d alpha of F(w'(alpha)), w'(alpha) = w - lr grad_w G(w, alpha) (+ a shift free of alpha).

    = grad_alpha[-lr <grad_w G(w, alpha), g'>] with g' = grad_w F(w') held constant; the inner
    product is a JVP of G along g' (forward mode through the main network), differentiated in
    alpha (a VJP through the meta network only): no double backward.
    """
    (g, aux), grad_main = jax.value_and_grad(lambda w: lower(w, meta_params), has_aux=True)(
        main_params
    )
    lookahead = sgd_step(main_params, grad_main, lr)
    if lookahead_shift is not None:
        lookahead = jax.tree.map(jnp.add, lookahead, lookahead_shift)
    f_ahead, _, (g_prime, _) = value_and_grads(upper, lookahead, meta_params)

    def directional(meta: PyTree) -> jax.Array:
        return -lr * jax.jvp(lambda w: lower(w, meta)[0], (main_params,), (g_prime,))[1]

    d_meta = jax.grad(directional)(meta_params)
    return d_meta, {
        "G": g,
        "aux": aux,
        "grad_G": grad_main,
        "F_lookahead": f_ahead,
        "lookahead_params": lookahead,
    }


def mlc_meta_gradient(
    main_params: PyTree,
    meta_params: PyTree,
    noisy_batch: Batch,
    clean_batch: Batch,
    main_fn: MainFn,
    meta_fn: MetaFn,
    *,
    lr: jax.Array | float,
    lookahead_shift: PyTree | None = None,
) -> PyTree:
    """MLC's exact one-step hypergradient d/d alpha CE_clean(w - lr grad_w G(w, alpha)).

    `lookahead_shift` adds an alpha-free displacement to the lookahead point (the momentum and
    weight-decay part of MLC's optimiser lookahead); it moves g' but not the formula.
    """
    apply = with_aux(main_fn)
    return unrolled_hypergradient(
        upper_objective(clean_batch, apply, None),
        lower_objective(noisy_batch, apply, meta_fn),
        main_params,
        meta_params,
        lr=lr,
        lookahead_shift=lookahead_shift,
    )[0]
