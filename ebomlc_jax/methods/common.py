"""The method interface, and the machinery every method shares (state, optimisers, adapters).

A method is one module of this package: a frozen dataclass subclassing `Method`, registered by
name (`@registry.register("name")` plus one import line in `methods/__init__.py`). Nothing
outside `methods/` (and the configs) names a method; the training loop reads what it needs from
the class and the instance:

Configuration
- `name` (set by `register`) is `config.method.name`; the method's own block is
  `config.method.<name>`, declared by `default_config()`: a dict, one commented entry per
  hyperparameter (`placeholder(type)` for a field whose default is None; the methods import
  no ml_collections, so the benchmarks run where it is not installed).
  `hyperparameters(config)` maps a run's config to constructor keywords (by default the block
  as it is); `check(hp)` raises `ConfigError` for a value the method cannot
  run with. The constructor calls `check` (it is public API: `methods.create(...)`), and
  `validate` calls the same function before any compute.
- `from_config(config, main_model=..., num_classes=..., steps_per_epoch=..., axis_name=...,
  num_noisy=...)` builds it: the shared optimiser settings come from `config.optim`, the meta
  model (when `uses_meta`) from `config.model`, the run's shape (|D'|, steps per epoch, epochs)
  into `num_noisy`, `steps_per_epoch` and `num_epochs`, the batches' augmentation (`data.augment`,
  `data.augment_pad`) into `augment_pad`, anything else from its own block.

What it needs, declared
- `uses_meta`: it trains the label-correction meta model g(h(x), y) (`meta_model`); evaluation
  then measures the meta model's corrections on D' (`correct_labels`).
- `clean_parts(hp)`: 2 when each clean batch is split in halves (e.g. the released code's upper
  loss / lower loss halves), else 1; batch sizes and device counts must divide accordingly.
- `variant_of(hp)`: a variant name for the summary and the default workdir, or None.
- Second networks, per-example weights, extra tables: entries of its own in the state (e.g.
  "peer" / "peer_opt" with `make_optimizer`-style transforms of its own), built in `init`.
- An epoch-level hook: `epoch_pass(epoch)` names a set ("noisy" D' or "clean" D) to run
  `per_example(state, batch)` over, whole and in order, in eval mode, before training epoch
  `epoch` (0-based); `begin_epoch(state, epoch, outputs)` (pure, jit-able) then updates the state
  from those per-example outputs ([set size, ...] arrays). Noisy batches carry "index", the
  position of each example in D', so a step can read per-example tables kept in the state.

Running
- `init(rng, sample_images) -> state`: a plain dict PyTree ("step", "rng", "main", "main_opt",
  plus the method's own entries), checkpointed whole, so resume is exact.
- `step(state, noisy, clean) -> (state, measurements)`: pure; the caller compiles it with
  `jax.jit(method.step, donate_argnums=0)`. Noisy batches hold "image", "label", "index" and,
  for analysis only, "true_label"; clean batches "image" and "label".
- Evaluation: `predict(state, images)` gives the logits the paper's accuracy is read from;
  `extra_predictions` other heads to report (e.g. each of two networks).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ebomlc_jax import bilevel, models
from ebomlc_jax.errors import ConfigError

PyTree = Any
# {"step", "rng", "main": {"params", "batch_stats"}, "main_opt", + the method's own entries}
State = dict[str, Any]
Batch = Mapping[str, jax.Array]
Measurements = dict[str, jax.Array]
SETS = ("noisy", "clean")  # what an epoch pass may run over
Config = Any  # an ml_collections.ConfigDict of a run (read only through its fields)


@dataclasses.dataclass(frozen=True)
class placeholder:  # noqa: N801 (reads as ml_collections' `config_dict.placeholder(type)`)
    """A config field of type `type` whose default is None (ml_collections' placeholder)."""

    type: type


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


def lr_schedule(optim: Config, num_epochs: int, steps: int) -> optax.Schedule:
    """Piecewise-constant lr: x decay_factor after each fraction of the epochs in decay_at.

    A fraction f decays at the end of epoch round(f * num_epochs): the paper's (2/3, 5/6) of 120
    epochs are epochs 80 and 100, and a shorter run decays at the same share of training.
    """
    boundaries = {round(f * num_epochs) * steps: optim.decay_factor for f in optim.decay_at}
    return optax.piecewise_constant_schedule(optim.lr, boundaries)


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


def split_clean_batch(batch: Batch) -> tuple[Batch, Batch]:
    """(first half, second half) of a clean batch: upper-loss half and lower-loss half."""
    halves = {k: jnp.split(v, 2) for k, v in batch.items()}
    return {k: v[0] for k, v in halves.items()}, {k: v[1] for k, v in halves.items()}


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

    `segments` (optional) is passed to a model that takes it (see `label_correction`).
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


def init_network(model: nn.Module, rng: jax.Array, sample_images: jax.Array) -> PyTree:
    """{"params", "batch_stats"} of a freshly initialised main-model-like network."""
    variables = without_axis(model).init(rng, sample_images, train=False)
    return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def sgd_update(
    tx: optax.GradientTransformation,
    network: PyTree,
    opt_state: PyTree,
    grads: PyTree,
    batch_stats: PyTree,
    start: PyTree | None = None,
    decay_at: PyTree | None = None,
) -> tuple[PyTree, PyTree]:
    """(network, opt_state) after one step of `tx` along `grads`, added to `start` (default: the
    current parameters), weight decay at `decay_at` (default: the current parameters)."""
    params = network["params"]
    updates, opt_state = tx.update(grads, opt_state, params if decay_at is None else decay_at)
    new = optax.apply_updates(params if start is None else start, updates)
    return {"params": new, "batch_stats": batch_stats}, opt_state


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """A training method: `init(rng, sample_images) -> state`, pure `step(state, noisy, clean)`.

    The interface is described in this module's docstring.
    """

    main_model: nn.Module
    meta_model: nn.Module | None = None
    lr_schedule: optax.Schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    meta_lr: float = 3e-4
    axis_name: str | None = None  # pmap axis; the models must be built with the same one
    # The run's shape, for methods with tables over D' or schedules in epochs (0: not given).
    num_noisy: int = 0  # |D'|
    steps_per_epoch: int = 0
    num_epochs: int = 0
    # The run's training augmentation, for methods that augment extra views inside a step:
    # data.augment_pad when data.augment, else None (the batches are not augmented).
    augment_pad: int | None = None

    name: ClassVar[str] = ""  # set by registry.register
    uses_meta: ClassVar[bool] = False

    # -- configuration (class level: validate calls these before anything is built)
    @classmethod
    def default_config(cls) -> dict[str, Any]:
        """This method's block of the run config, `config.method.<name>` (empty by default)."""
        return {}

    @classmethod
    def hyperparameters(cls, config: Config) -> dict[str, Any]:
        """Constructor keywords from a run's config: its block, as it is."""
        return dict(config.method[cls.name]) if cls.name in config.method else {}

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        """Raise ConfigError for a hyperparameter this method cannot run with."""

    @classmethod
    def clean_parts(cls, hp: Mapping[str, Any]) -> int:
        """Into how many equal parts a step splits its clean batch."""
        return 1

    @classmethod
    def variant_of(cls, hp: Mapping[str, Any]) -> str | None:
        """The variant a run reports (summary, default workdir), or None."""
        return None

    @classmethod
    def run_name(cls, config: Config) -> str:
        """'<name>' or '<name>-<variant>': the default workdir's name for this run."""
        variant = cls.variant_of(cls.hyperparameters(config))
        return cls.name + (f"-{variant}" if variant else "")

    @classmethod
    def field(cls, name: str) -> str:
        """The config path of one of this method's hyperparameters, for messages."""
        return f"method.{cls.name}.{name}" if cls.name else name

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        main_model: nn.Module,
        num_classes: int,
        steps_per_epoch: int,
        axis_name: str | None = None,
        num_noisy: int = 0,
    ) -> Method:
        """The method of a run's config, around `main_model` (built by the caller)."""
        meta = (
            models.meta_from_config(config.model, num_classes, axis_name) if cls.uses_meta else None
        )
        return cls(
            main_model=main_model,
            meta_model=meta,
            lr_schedule=lr_schedule(config.optim, config.num_epochs, steps_per_epoch),
            momentum=config.optim.momentum,
            weight_decay=config.optim.weight_decay,
            meta_lr=config.optim.meta_lr,
            axis_name=axis_name,
            num_noisy=num_noisy,
            steps_per_epoch=steps_per_epoch,
            num_epochs=config.num_epochs,
            augment_pad=config.data.augment_pad if config.data.augment else None,
            **cls.hyperparameters(config),
        )

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
        self.check(self.own_hyperparameters())

    def own_hyperparameters(self) -> dict[str, Any]:
        """The values of the fields this class adds to Method (its config block's fields)."""
        base = {f.name for f in dataclasses.fields(Method)}
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in base
        }

    @property
    def clean_batch_parts(self) -> int:
        """`clean_parts` of this instance."""
        return self.clean_parts(self.own_hyperparameters())

    @property
    def variant(self) -> str | None:
        """`variant_of` this instance."""
        return self.variant_of(self.own_hyperparameters())

    @property
    def main_tx(self) -> optax.GradientTransformation:
        return main_optimizer(self.lr_schedule, self.momentum, self.weight_decay)

    @property
    def meta_tx(self) -> optax.GradientTransformation:
        return meta_optimizer(self.meta_lr)

    # -- state
    def init(self, rng: jax.Array, sample_images: jax.Array) -> State:
        """Fresh state: parameters, BN statistics, optimiser states, rng and step counter."""
        k_main, k_meta, k_drop, k_state = jax.random.split(rng, 4)
        main = init_network(self.main_model, k_main, sample_images)
        state = {
            "step": jnp.zeros((), jnp.int32),
            "rng": k_state,
            "main": main,
            "main_opt": self.main_tx.init(main["params"]),
        }
        if self.uses_meta:
            _, features = jax.eval_shape(
                lambda: without_axis(self.main_model).apply(main, sample_images, train=False)
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

    def apply_fn(self, state: State, network: str = "main") -> bilevel.MainApply:
        """The training-mode main model (or another network of the state) from this step's input
        BN statistics."""
        return main_apply(self.main_model, state[network]["batch_stats"], self.axis_name)

    def update_meta(self, state: State, grad_meta: PyTree) -> State:
        """One step of the meta model's optimiser along `grad_meta`."""
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
        """One momentum-SGD step along `grad_main`, added to `start` (default: the current w),
        weight decay at `decay_at` (default: the current w); counts the step."""
        main, opt = sgd_update(
            self.main_tx, state["main"], state["main_opt"], grad_main, batch_stats, start, decay_at
        )
        return {**state, "main": main, "main_opt": opt, "step": state["step"] + 1}

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

    # -- the epoch-level hook (none by default)
    def epoch_pass(self, epoch: int) -> str | None:
        """The set ("noisy" or "clean") to pass over before training epoch `epoch`, or None."""
        return None

    def per_example(self, state: State, batch: Batch) -> dict[str, jax.Array]:
        """Eval-mode per-example outputs of one batch of the epoch pass ([B, ...] arrays)."""
        raise NotImplementedError

    def begin_epoch(self, state: State, epoch: jax.Array, outputs: dict[str, jax.Array]) -> State:
        """The state for training epoch `epoch`, from the epoch pass's per-example outputs."""
        raise NotImplementedError

    # -- evaluation
    def forward(self, state: State, images: jax.Array, network: str = "main"):
        """Eval-mode (running BN statistics) logits and features of a network of the state."""
        return without_axis(self.main_model).apply(state[network], images, train=False)

    def predict(self, state: State, images: jax.Array) -> jax.Array:
        """The logits the method is evaluated by (test accuracy, clean-set model selection)."""
        return self.forward(state, images)[0]

    def extra_predictions(self, state: State, images: jax.Array) -> dict[str, jax.Array]:
        """Other heads whose test accuracy is reported as `test_accuracy_<name>` (none here)."""
        return {}

    def correct_labels(self, state: State, images: jax.Array, labels: jax.Array) -> jax.Array:
        """The meta model's corrected label distribution g(h(x), y), dropout off.

        h comes from the eval-mode main model; the meta BN uses this batch's statistics (it keeps
        no running averages, as in the released code).
        """
        _, features = self.forward(state, images)
        return without_axis(self.meta_model).apply(
            {"params": state["meta"]["params"]}, features, labels, deterministic=True
        )


def meta_accuracy(targets: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Accuracy of the meta model's argmax on the true labels, when the batch carries them."""
    if "true_label" not in batch:
        return {}
    hits = jnp.argmax(targets, axis=-1) == batch["true_label"]
    return {"meta_accuracy": jnp.mean(hits.astype(jnp.float32))}


def mean_by_correctness(
    values: jax.Array, batch: Batch, axis_name: str | None = None
) -> dict[str, jax.Array]:
    """Mean of per-example values over the batch's mislabelled and correctly labelled examples
    ("mislabelled", "correct"; 0 for an empty group), from "true_label": a diagnostic, never a
    training input; {} without true labels. Over the global batch under pmap."""
    if "true_label" not in batch:
        return {}
    wrong = (batch["label"] != batch["true_label"]).astype(values.dtype)
    out = {}
    for name, mask in (("mislabelled", wrong), ("correct", 1 - wrong)):
        sums = jnp.stack([jnp.sum(values * mask), jnp.sum(mask)])
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        out[name] = sums[0] / jnp.maximum(sums[1], 1)
    return out
