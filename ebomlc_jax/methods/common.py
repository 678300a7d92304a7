"""Machinery every method shares: state, optimisers, model adapters, the released SGD lookahead."""

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ebomlc_jax import bilevel
from ebomlc_jax.data.pipeline import split_clean_batch
from ebomlc_jax.errors import ConfigError

PyTree = Any
# {"step", "rng", "main": {"params", "batch_stats"}, "main_opt", ["meta": {"params"}, "meta_opt"]}
State = dict[str, Any]
Batch = Mapping[str, jax.Array]
Measurements = dict[str, jax.Array]


def main_optimizer(
    lr_schedule: optax.Schedule, momentum: float, weight_decay: float
) -> optax.GradientTransformation:
    """PyTorch's SGD(momentum, weight_decay): decay added to the gradient, then heavy-ball."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(lr_schedule, momentum=momentum)
    )


def meta_optimizer(lr: float) -> optax.GradientTransformation:
    """Adam with AMSGrad, eps 1e-8, no weight decay (optax keeps the max of bias-corrected nu)."""
    return optax.amsgrad(lr, eps=1e-8)


def momentum_buffer(main_opt_state: PyTree) -> PyTree:
    """The heavy-ball buffer b of the main optimiser (zeros before the first step)."""
    return optax.tree_utils.tree_get(main_opt_state, "trace")


def sgd_delta(
    params: PyTree,
    grads: PyTree,
    trace: PyTree,
    lr: jax.Array,
    momentum: float,
    weight_decay: float,
) -> PyTree:
    """-lr (mu b + g + lambda w): the released code's `update_params(..., deltaonly=True)`."""
    return jax.tree.map(
        lambda w, g, b: -lr * (momentum * b + g + weight_decay * w), params, grads, trace
    )


def accepts_segments(model: nn.Module) -> bool:
    """Whether the model's __call__ takes `segments` (one pass over concatenated batches)."""
    return "segments" in inspect.signature(type(model).__call__).parameters


def split_clean(clean_batch: Batch, into_lower: bool) -> tuple[Batch, Batch | None]:
    """(upper batch, lower batch): halves when the clean batch is also mixed into G."""
    return split_clean_batch(clean_batch) if into_lower else (clean_batch, None)


def without_axis(model: nn.Module | None) -> nn.Module | None:
    """The same model outside any pmap (evaluation, init): its collective axis names removed."""
    for field in ("bn_axis_name", "axis_name"):
        if getattr(model, field, None) is not None:
            return model.clone(**{field: None})
    return model


def reduce_grad(tree: PyTree, axis_name: str | None) -> PyTree:
    """Identity whose cotangent is averaged over `axis_name` (pmap data parallelism).

    Parameters pass through it before every model call, so every gradient the bilevel math
    takes is the global-batch gradient without a collective in bilevel.py.
    """
    return tree if axis_name is None else _reduce_grad(tree, axis_name)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _reduce_grad(tree, axis_name):
    return tree


@_reduce_grad.defjvp
def _reduce_grad_jvp(axis_name, primals, tangents):
    # Replicated tangents are unchanged by the pmean; its transpose averages the cotangents.
    return primals[0], jax.lax.pmean(tangents[0], axis_name)


def main_apply(
    model: nn.Module, batch_stats: PyTree, axis_name: str | None = None
) -> bilevel.MainApply:
    """Training-mode main model: (logits, features, updated batch_stats) from fixed input stats.

    `segments` (optional) is passed to a model that takes it (see `joint_main_apply`).
    """

    def apply(params: PyTree, images: jax.Array, segments: tuple[int, ...] | None = None):
        (logits, features), updates = model.apply(
            {"params": reduce_grad(params, axis_name), "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            **({} if segments is None else {"segments": segments}),
        )
        return logits, features, updates["batch_stats"]

    return apply


def joint_main_apply(apply: Callable[..., tuple[jax.Array, jax.Array, Any]]) -> bilevel.JointApply:
    """`apply` (from `main_apply`) over two batches in one pass: concatenated, BN stats per batch.

    The model takes `segments=(n, m)` (CifarResNet does); the BN update is the first batch's,
    as `apply` over it alone would give.
    """

    def joint(params: PyTree, images: jax.Array, clean_images: jax.Array):
        n, m = images.shape[0], clean_images.shape[0]
        both = jnp.concatenate([images, clean_images])
        logits, features, stats = apply(params, both, (n, m))
        return logits[:n], features[:n], stats, logits[n:]

    return joint


def meta_fn(
    model: nn.Module, dropout_key: jax.Array | None, axis_name: str | None = None
) -> bilevel.MetaFn:
    """Meta model in training mode: dropout with this key (None: off), batch-statistics BN."""

    def fn(params: PyTree, features: jax.Array, labels: jax.Array) -> jax.Array:
        return model.apply(
            {"params": reduce_grad(params, axis_name)},
            features,
            labels,
            deterministic=dropout_key is None,
            rngs={} if dropout_key is None else {"dropout": dropout_key},
        )

    return fn


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """A training method: `init(rng, sample_images) -> state`, pure `step(state, noisy, clean)`.

    `step` is jit-compiled once by the caller with `jax.jit(method.step, donate_argnums=0)`.
    """

    main_model: nn.Module
    meta_model: nn.Module | None = None
    lr_schedule: optax.Schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    meta_lr: float = 3e-4
    clean_in_lower_loss: bool = True
    joint_lower_pass: bool = False  # G's noisy and clean batches in one pass (per-batch BN stats)
    axis_name: str | None = None  # pmap axis; the models must be built with the same one

    uses_meta: ClassVar[bool] = True

    def __post_init__(self):
        if self.uses_meta and self.meta_model is None:
            raise ConfigError(f"method {type(self).__name__} needs a meta model (meta_model=None)")
        for model in (self.main_model, self.meta_model):
            name = getattr(model, "bn_axis_name", getattr(model, "axis_name", None))
            if model is not None and name != self.axis_name:
                raise ConfigError(
                    f"{type(model).__name__} has axis name {name!r} but the method has "
                    f"{self.axis_name!r}: build both for the same parallel mode"
                )
        if self.joint_lower_pass and not (self.uses_meta and self.clean_in_lower_loss):
            raise ConfigError(
                f"method.joint_lower_pass=True needs clean_in_lower_loss=True and a method with "
                f"a lower loss G ({type(self).__name__} with clean_in_lower_loss="
                f"{self.clean_in_lower_loss}: there is no clean half in G to join). Allowed: False"
            )
        if self.joint_lower_pass and not accepts_segments(self.main_model):
            raise ConfigError(
                f"method.joint_lower_pass=True needs a main model whose __call__ takes `segments` "
                f"(CifarResNet does); {type(self.main_model).__name__} does not. Allowed: False"
            )

    @property
    def main_tx(self) -> optax.GradientTransformation:
        return main_optimizer(self.lr_schedule, self.momentum, self.weight_decay)

    @property
    def meta_tx(self) -> optax.GradientTransformation:
        return meta_optimizer(self.meta_lr)

    def init(self, rng: jax.Array, sample_images: jax.Array) -> State:
        """Fresh state: parameters, BN statistics, optimiser states, rng and step counter."""
        k_main, k_meta, k_drop, k_state = jax.random.split(rng, 4)
        variables = self.main_model.init(k_main, sample_images, train=False)
        params = variables["params"]
        state = {
            "step": jnp.zeros((), jnp.int32),
            "rng": k_state,
            "main": {"params": params, "batch_stats": variables["batch_stats"]},
            "main_opt": self.main_tx.init(params),
        }
        if self.uses_meta:
            _, features = jax.eval_shape(
                lambda: self.main_model.apply(variables, sample_images, train=False)
            )
            meta_vars = without_axis(self.meta_model).init(
                {"params": k_meta, "dropout": k_drop},
                jnp.zeros(features.shape, features.dtype),
                jnp.zeros(features.shape[:1], jnp.int32),
            )
            state["meta"] = {"params": meta_vars["params"]}
            state["meta_opt"] = self.meta_tx.init(meta_vars["params"])
        return state

    # -- pieces the steps share
    def begin(self, state: State, num_keys: int) -> tuple[jax.Array, list[jax.Array], State]:
        """Current lr, `num_keys` fresh dropout keys, and the state with its rng advanced."""
        rng, key = jax.random.split(state["rng"])
        keys = [jax.random.fold_in(key, i) for i in range(num_keys)]
        return self.lr_schedule(state["step"]), keys, {**state, "rng": rng}

    def apply_fn(self, state: State) -> bilevel.MainApply:
        """The training-mode main model from this step's input BN statistics."""
        return main_apply(self.main_model, state["main"]["batch_stats"], self.axis_name)

    def meta_fn(self, key: jax.Array | None) -> bilevel.MetaFn:
        """The training-mode meta model with dropout key `key`."""
        return meta_fn(self.meta_model, key, self.axis_name)

    def objectives(
        self,
        state: State,
        noisy_batch: Batch,
        clean_batch: Batch,
        lower_keys: list[jax.Array],
        upper_key: jax.Array | None = None,
        rho: float = 1.0,
        mixture=bilevel.mixture_nll,
    ) -> tuple[bilevel.Objective, list[bilevel.Objective]]:
        """F on the (first half of the) clean batch and one G per dropout key in `lower_keys`.

        F mixes in the meta model (Eq. 9, its own dropout key) when `upper_key` is given, else
        it is the plain CE of Eq. 2. G holds the second clean half when clean_in_lower_loss,
        passed through the network together with the noisy batch when joint_lower_pass.
        """
        apply = self.apply_fn(state)
        joint = joint_main_apply(apply) if self.joint_lower_pass else None
        upper_batch, lower_clean = split_clean(clean_batch, self.clean_in_lower_loss)
        upper_meta = None if upper_key is None else self.meta_fn(upper_key)
        upper = bilevel.upper_objective(upper_batch, apply, upper_meta, rho, mixture)
        lowers = [
            bilevel.lower_objective(noisy_batch, apply, self.meta_fn(k), lower_clean, joint)
            for k in lower_keys
        ]
        return upper, lowers

    def update_meta(self, state: State, grad_meta: PyTree) -> State:
        """One AMSGrad step of the meta model along `grad_meta`."""
        updates, opt = self.meta_tx.update(grad_meta, state["meta_opt"], state["meta"]["params"])
        params = optax.apply_updates(state["meta"]["params"], updates)
        return {**state, "meta": {"params": params}, "meta_opt": opt}

    def update_main(
        self,
        state: State,
        grad_main: PyTree,
        batch_stats: PyTree,
        start: PyTree | None = None,
        decay_at: PyTree | None = None,
    ) -> State:
        """One momentum-SGD step along `grad_main`, added to `start` (default: the current w).

        Weight decay uses `decay_at` (default: the current w).
        """
        params = state["main"]["params"]
        updates, opt = self.main_tx.update(
            grad_main, state["main_opt"], params if decay_at is None else decay_at
        )
        new = optax.apply_updates(params if start is None else start, updates)
        return {
            **state,
            "main": {"params": new, "batch_stats": batch_stats},
            "main_opt": opt,
            "step": state["step"] + 1,
        }

    def step(
        self, state: State, noisy_batch: Batch, clean_batch: Batch
    ) -> tuple[State, Measurements]:
        """One training step; returns the new state and scalar measurements."""
        state, measurements = self._step(state, noisy_batch, clean_batch)
        if self.axis_name is not None:  # per-device losses -> global-batch values
            measurements = jax.lax.pmean(measurements, self.axis_name)
        return state, measurements

    def _step(
        self, state: State, noisy_batch: Batch, clean_batch: Batch
    ) -> tuple[State, Measurements]:
        raise NotImplementedError

    # -- evaluation
    def predict(self, state: State, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Eval-mode (running BN statistics) logits and features of the main model."""
        variables = {"params": state["main"]["params"], "batch_stats": state["main"]["batch_stats"]}
        return without_axis(self.main_model).apply(variables, images, train=False)

    def correct_labels(self, state: State, images: jax.Array, labels: jax.Array) -> jax.Array:
        """The meta model's corrected label distribution g(h(x), y), dropout off.

        h comes from the eval-mode main model; the meta BN uses this batch's statistics (it keeps
        no running averages, as in the released code).
        """
        _, features = self.predict(state, images)
        return without_axis(self.meta_model).apply(
            {"params": state["meta"]["params"]}, features, labels, deterministic=True
        )


def meta_accuracy(targets: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Accuracy of the meta model's argmax on the true labels, when the batch carries them."""
    if "true_label" not in batch:
        return {}
    hits = jnp.argmax(targets, axis=-1) == batch["true_label"]
    return {"meta_accuracy": jnp.mean(hits.astype(jnp.float32))}
