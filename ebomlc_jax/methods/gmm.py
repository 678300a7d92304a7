"""DivideMix's loss division on the device: a two-component 1-D Gaussian mixture fitted by EM.

The released `eval_train` (LiJunnan1992/DivideMix, Train_cifar.py) min-max normalises the
per-example losses and fits sklearn's `GaussianMixture(n_components=2, max_iter=10, tol=1e-2,
reg_covar=5e-4)`; the clean probability of an example is its posterior of the component with the
smaller mean. This is the same EM (sklearn 1.x `BaseMixture.fit_predict`, `_m_step`,
`_estimate_gaussian_parameters`), in JAX. One difference: sklearn starts EM from a k-means
clustering with a random k-means++ start (`init_params="kmeans"`, `n_init=1`, unseeded in the
code); here k-means is Lloyd's iteration from the centres (min, max), which is deterministic.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

MAX_ITER = 10  # EM iterations (sklearn max_iter, as released)
TOL = 1e-2  # stop when the mean log-likelihood changes by less (sklearn tol, as released)
REG_COVAR = 5e-4  # added to each variance (sklearn reg_covar, as released)
KMEANS_ITER = 300  # Lloyd iterations at most (sklearn KMeans max_iter)


class Mixture(NamedTuple):
    """Weights, means and variances of the two components ([2] each)."""

    weights: jax.Array
    means: jax.Array
    variances: jax.Array


def min_max_normalize(losses: jax.Array) -> jax.Array:
    """(l - min) / (max - min), as `eval_train`; all-equal losses give zeros instead of NaN."""
    low, high = jnp.min(losses), jnp.max(losses)
    return (losses - low) / jnp.maximum(high - low, jnp.finfo(losses.dtype).tiny)


def kmeans_split(x: jax.Array) -> jax.Array:
    """Two-cluster 1-D k-means (Lloyd from centres min, max): True where x joins the upper one."""

    def assign(centres):
        return x > 0.5 * (centres[0] + centres[1])

    def centres_of(upper):
        n_up = jnp.sum(upper)
        up = jnp.sum(jnp.where(upper, x, 0)) / jnp.maximum(n_up, 1)
        low = jnp.sum(jnp.where(upper, 0, x)) / jnp.maximum(x.size - n_up, 1)
        return jnp.stack([low, up])

    def body(carry):
        i, centres, _ = carry
        new = centres_of(assign(centres))
        return i + 1, new, jnp.any(new != centres)

    start = jnp.stack([jnp.min(x), jnp.max(x)])
    _, centres, _ = jax.lax.while_loop(
        lambda c: (c[0] < KMEANS_ITER) & c[2], body, (0, start, jnp.bool_(True))
    )
    return assign(centres)


def m_step(x: jax.Array, resp: jax.Array) -> Mixture:
    """`_estimate_gaussian_parameters` (full covariance, 1-D), weights normalised to sum 1."""
    nk = jnp.sum(resp, axis=0) + 10 * jnp.finfo(resp.dtype).eps
    means = resp.T @ x / nk
    variances = jnp.sum(resp * (x[:, None] - means) ** 2, axis=0) / nk + REG_COVAR
    return Mixture(nk / jnp.sum(nk), means, variances)


def log_resp(x: jax.Array, mix: Mixture) -> tuple[jax.Array, jax.Array]:
    """(mean log-likelihood, [N, 2] log responsibilities): sklearn's `_e_step`."""
    log_prob = -0.5 * (
        jnp.log(2 * jnp.pi) + jnp.log(mix.variances) + (x[:, None] - mix.means) ** 2 / mix.variances
    )
    weighted = log_prob + jnp.log(mix.weights)
    norm = jax.nn.logsumexp(weighted, axis=1)
    return jnp.mean(norm), weighted - norm[:, None]


def fit(x: jax.Array) -> Mixture:
    """EM from the k-means split, at most MAX_ITER iterations, stopping as `fit_predict` does."""
    upper = kmeans_split(x)
    mix = m_step(x, jnp.stack([~upper, upper], axis=1).astype(x.dtype))

    def body(_, carry):
        mix, bound, done = carry
        new_bound, log_r = log_resp(x, mix)
        new = m_step(x, jnp.exp(log_r))
        keep = lambda a, b: jnp.where(done, a, b)  # noqa: E731 -- after convergence: no change
        converged = jnp.abs(new_bound - bound) < TOL
        return jax.tree.map(keep, mix, new), keep(bound, new_bound), done | converged

    start = (mix, jnp.array(-jnp.inf, x.dtype), jnp.bool_(False))
    mix, _, _ = jax.lax.fori_loop(0, MAX_ITER, body, start)
    return mix


def clean_probability(losses: jax.Array) -> jax.Array:
    """Posterior of the smaller-mean component of the mixture fitted to `losses` (`eval_train`)."""
    mix = fit(losses)
    _, log_r = log_resp(losses, mix)
    return jnp.exp(log_r[:, jnp.argmin(mix.means)])
