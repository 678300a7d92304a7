"""DivideMix (Li, Socher, Hoi, ICLR 2020): two networks, each trained by MixMatch on the division
of D' that the other network's loss GMM makes (co-divide), after a CE warm-up.

Follows the released Train_cifar.py (LiJunnan1992/DivideMix): `warmup`, `eval_train`, `train`,
`SemiLoss`, `NegEntropy`, `linear_rampup`. docs/methods/dividemix.md says how it maps onto one
noisy and one clean batch per step, and lists every deviation.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ebomlc_jax import bilevel
from ebomlc_jax.data.augment import augment
from ebomlc_jax.errors import ConfigError, check_number
from ebomlc_jax.methods import common, gmm
from ebomlc_jax.methods.registry import register

NETS = ("main", "peer")
OTHER = {"main": "peer", "peer": "main"}
PAPER_RATES = (0.2, 0.5, 0.8, 0.9)  # the symmetric-noise rows of the paper's Table 7
# lambda_u of the paper's Appendix B, Table 7 (arXiv 2002.07394), symmetric noise by rate.
LAMBDA_U = {
    "cifar10": {0.2: 0.0, 0.5: 25.0, 0.8: 25.0, 0.9: 50.0},
    "cifar100": {0.2: 25.0, 0.5: 150.0, 0.8: 150.0, 0.9: 150.0},
}
WARMUP_EPOCHS = {"cifar10": 10, "cifar100": 30}  # Section 4.1 and Train_cifar.py's warm_up
DIGITS_WARMUP_EPOCHS = 1  # digits (not in the paper): one epoch (20 steps) of CE; the demo is 12


def paper_rate(rate: float) -> float:
    """The row of Table 7 a noise rate takes: the smallest listed rate >= it (else 0.9)."""
    return next((r for r in PAPER_RATES if rate <= r), PAPER_RATES[-1])


def softmax32(logits: jax.Array) -> jax.Array:
    """Softmax in float32 (the main model may compute in bfloat16)."""
    return jax.nn.softmax(logits.astype(jnp.float32))


def sharpen(probs: jax.Array, temperature: float) -> jax.Array:
    """p^(1/T), renormalised per row (`train`: temperature sharpening)."""
    p = probs ** (1 / temperature)
    return p / jnp.sum(p, axis=-1, keepdims=True)


def co_refine(own: jax.Array, weights: jax.Array, onehot: jax.Array, temperature: float):
    """Label co-refinement: sharpen(w y + (1 - w) p), p the own network's mean over the views
    ([views, B, K]), w the clean probability from the other network's division ([B])."""
    w = weights[:, None]
    return sharpen(w * onehot + (1 - w) * jnp.mean(own, axis=0), temperature)


def co_guess(own: jax.Array, other: jax.Array, temperature: float) -> jax.Array:
    """Label co-guessing: sharpen(mean of both networks' softmax over both views)."""
    return sharpen(jnp.mean(jnp.concatenate([own, other]), axis=0), temperature)


def mixup(key: jax.Array, inputs: jax.Array, targets: jax.Array, alpha: float):
    """MixMatch's mixup: l ~ Beta(alpha, alpha), l = max(l, 1 - l), partners a permutation."""
    k_lam, k_perm = jax.random.split(key)
    lam = jax.random.beta(k_lam, alpha, alpha)
    lam = jnp.maximum(lam, 1 - lam)
    perm = jax.random.permutation(k_perm, inputs.shape[0])
    mix = lambda a: lam * a + (1 - lam) * a[perm]  # noqa: E731
    return mix(inputs), mix(targets)


def semi_losses(logits: jax.Array, targets: jax.Array, labelled: jax.Array):
    """(Lx, Lu, prior penalty) of `SemiLoss` and `train` over one mixed batch.

    Lx: soft-target CE, mean over the rows whose own example is labelled; Lu: squared error of
    the softmax, mean over the other rows and the classes; penalty: KL(uniform || mean softmax).
    """
    logits = logits.astype(jnp.float32)
    probs = jax.nn.softmax(logits)
    ce = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
    sq = jnp.mean((probs - targets) ** 2, axis=-1)
    lab = labelled.astype(jnp.float32)
    lx = jnp.sum(lab * ce) / jnp.maximum(jnp.sum(lab), 1)
    lu = jnp.sum((1 - lab) * sq) / jnp.maximum(jnp.sum(1 - lab), 1)
    prior = 1 / logits.shape[-1]
    penalty = jnp.sum(prior * jnp.log(prior / jnp.mean(probs, axis=0)))
    return lx, lu, penalty


def negative_entropy(logits: jax.Array) -> jax.Array:
    """`NegEntropy`: mean over rows of sum_k p_k log p_k (the asymmetric-noise warm-up penalty)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


def linear_rampup(epoch: jax.Array, warmup: int, length: int, lambda_u: float) -> jax.Array:
    """`linear_rampup`: lambda_u * clip((epoch - warm_up) / rampup_length, 0, 1)."""
    return lambda_u * jnp.clip((epoch - warmup) / length, 0.0, 1.0)


def division_measurements(labelled: jax.Array, noisy: common.Batch) -> dict[str, jax.Array]:
    """Share of the noisy batch in the labelled part, and of mislabelled examples in that part
    (from true_label: analysis only)."""
    out = {"labelled": jnp.mean(labelled.astype(jnp.float32))}
    if "true_label" in noisy:
        wrong = labelled & (noisy["label"] != noisy["true_label"])
        out["labelled_mislabelled"] = jnp.sum(wrong) / jnp.maximum(jnp.sum(labelled), 1)
    return out


@register("dividemix")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DivideMix(common.Method):
    """Networks "main" and "peer"; warm-up CE, then per epoch a GMM division of D' by each
    network's eval-mode losses, and per step one MixMatch update of each network on the noisy
    batch divided by the other network, the clean batch joining the labelled part (w = 1).

    Defaults: the paper's values for CIFAR-10 at 60% uniform noise (`hyperparameters`).
    """

    warmup_epochs: int = 10
    rampup_epochs: int = 16
    lambda_u: float = 25.0
    p_threshold: float = 0.5
    temperature: float = 0.5
    alpha: float = 4.0
    confidence_penalty: float = 0.0
    loss_average_epochs: int = 1

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {
            "warmup_epochs": common.placeholder(int),  # CE epochs before the first division;
            #   None: the paper's 10 (CIFAR-10) or 30 (CIFAR-100), 1 on digits (not in the paper)
            "rampup_epochs": 16,  # lambda_u's linear ramp after warm-up (`linear_rampup`)
            "lambda_u": common.placeholder(float),  # weight of Lu; None: the paper's Table 7
            #   for the dataset and rate (flip/pair noise: 0 on CIFAR-10 as its asym row;
            #   CIFAR-100 has no asym row: its symmetric value); digits: CIFAR-10's
            "p_threshold": common.placeholder(float),  # labelled if clean probability > it;
            #   None: 0.5, 0.6 at the paper's 90% row (rate > 0.8)
            "temperature": 0.5,  # T of the sharpening (paper, all CIFAR settings)
            "alpha": 4.0,  # Beta(alpha, alpha) of mixup (paper, all CIFAR settings)
            "confidence_penalty": common.placeholder(float),  # weight of the warm-up's
            #   negative entropy; None: 1 for flip/pair noise (the code's asym branch), else 0
            "loss_average_epochs": common.placeholder(int),  # epochs of normalised losses
            #   averaged into the GMM; None: 5 at the paper's 90% row (the code's r == 0.9), else 1
        }

    @classmethod
    def hyperparameters(cls, config: common.Config) -> dict[str, Any]:
        hp = super().hyperparameters(config)
        dataset, kind = config.data.dataset, config.noise.kind
        like = "cifar100" if dataset == "cifar100" else "cifar10"
        row = paper_rate(config.noise.rate)
        symmetric = kind == "uniform"
        resolved = {
            "warmup_epochs": WARMUP_EPOCHS.get(dataset, DIGITS_WARMUP_EPOCHS),
            "lambda_u": LAMBDA_U[like][row] if symmetric or like == "cifar100" else 0.0,
            "p_threshold": 0.6 if row == 0.9 else 0.5,
            "confidence_penalty": 0.0 if symmetric else 1.0,
            "loss_average_epochs": 5 if row == 0.9 else 1,
        }
        return {k: resolved[k] if hp[k] is None and k in resolved else v for k, v in hp.items()}

    @classmethod
    def check(cls, hp: Mapping[str, Any]) -> None:
        inf = float("inf")
        for name, low, integer, low_open in (
            ("warmup_epochs", 0, True, False),
            ("rampup_epochs", 1, True, False),
            ("lambda_u", 0, False, False),
            ("temperature", 0, False, True),
            ("alpha", 0, False, True),
            ("confidence_penalty", 0, False, False),
            ("loss_average_epochs", 1, True, False),
        ):
            check_number(
                cls.field(name),
                hp[name],
                low,
                inf,
                low_open=low_open,
                high_open=True,
                integer=integer,
            )
        check_number(cls.field("p_threshold"), hp["p_threshold"], 0, 1)

    def __post_init__(self):
        super().__post_init__()
        if self.num_noisy < 1 or self.steps_per_epoch < 1:
            raise ConfigError(
                f"{self.name} keeps tables over D' and counts epochs: it needs num_noisy >= 1 "
                f"and steps_per_epoch >= 1 (got {self.num_noisy}, {self.steps_per_epoch})"
            )

    # -- state
    def init(self, rng, sample_images):
        k_main, k_peer = jax.random.split(rng)
        state = super().init(k_main, sample_images)
        peer = common.init_network(self.main_model, k_peer, sample_images)
        # One array per network (not one shared): a donated state must not hold a buffer twice.
        table = lambda: jnp.zeros(self.num_noisy, jnp.float32)  # noqa: E731
        history = lambda: jnp.zeros((self.loss_average_epochs, self.num_noisy), jnp.float32)  # noqa: E731
        return {
            **state,
            "peer": peer,
            "peer_opt": self.main_tx.init(peer["params"]),
            "clean_prob": {n: table() for n in NETS},  # each network's division of D'
            "loss_history": {n: history() for n in NETS},  # normalised losses, newest first
            "divisions": jnp.zeros((), jnp.int32),
        }

    # -- the division (`eval_train`), before every epoch after warm-up
    def epoch_pass(self, epoch):
        return "noisy" if epoch >= self.warmup_epochs else None

    def per_example(self, state, batch):
        return {
            n: bilevel.cross_entropies(self.forward(state, batch["image"], n)[0], batch["label"])
            for n in NETS
        }

    def begin_epoch(self, state, epoch, outputs):
        count = jnp.minimum(state["divisions"] + 1, self.loss_average_epochs)
        filled = (jnp.arange(self.loss_average_epochs) < count)[:, None]
        history, prob = {}, {}
        for n in NETS:
            newest = gmm.min_max_normalize(outputs[n])
            history[n] = jnp.roll(state["loss_history"][n], 1, axis=0).at[0].set(newest)
            mean = jnp.sum(jnp.where(filled, history[n], 0), axis=0) / count
            prob[n] = gmm.clean_probability(mean)
        return {
            **state,
            "loss_history": history,
            "clean_prob": prob,
            "divisions": state["divisions"] + 1,
        }

    # -- steps
    def _step(self, state, noisy_batch, clean_batch):
        lr, (key,), state = self.begin(state, 1)
        warm = state["step"] < self.warmup_epochs * self.steps_per_epoch
        state, meas = jax.lax.cond(
            warm, self._warmup_step, self._mixmatch_step, state, noisy_batch, clean_batch, key
        )
        return state, {**meas, "lr": lr}

    def _update(self, state: common.State, network: str, grads, batch_stats) -> common.State:
        """One step of the network's own SGD (the repository's recipe) along `grads`."""
        net, opt = common.sgd_update(
            self.main_tx, state[network], state[f"{network}_opt"], grads, batch_stats
        )
        return {**state, network: net, f"{network}_opt": opt}

    def _warmup_step(self, state, noisy, clean, key):
        """`warmup` for both networks: CE (+ weighted negative entropy) on the noisy and the
        clean batch together."""
        images = jnp.concatenate([noisy["image"], clean["image"]])
        labels = jnp.concatenate([noisy["label"], clean["label"]])
        new, meas = state, {"lambda_u": jnp.zeros(()), "warmup": jnp.ones(())}
        for n in NETS:
            apply = self.apply_fn(state, n)

            def loss_fn(params, apply=apply):
                logits, _, stats = apply(params, images)
                ce, penalty = bilevel.cross_entropy(logits, labels), negative_entropy(logits)
                return ce + self.confidence_penalty * penalty, (stats, ce, penalty)

            (loss, (stats, ce, penalty)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state[n]["params"]
            )
            new = self._update(new, n, grads, stats)
            everything = jnp.ones(noisy["label"].shape, bool)  # warm-up: all of D' labelled
            meas |= {f"loss_{n}": loss, f"Lx_{n}": ce, f"Lu_{n}": jnp.zeros(())}
            meas |= {f"penalty_{n}": self.confidence_penalty * penalty}
            meas |= {f"{k}_{n}": v for k, v in division_measurements(everything, noisy).items()}
        return {**new, "step": state["step"] + 1}, meas

    def _mixmatch_step(self, state, noisy, clean, key):
        """`train` for each network, with the other's division and co-guesses, both from the
        state at the start of this step."""
        k_view, *k_mix = jax.random.split(key, 1 + len(NETS))
        b = noisy["label"].shape[0]
        images = jnp.concatenate([noisy["image"], clean["image"]])
        second = images if self.augment_pad is None else augment(k_view, images, self.augment_pad)
        views = (images, second)
        # Eval-mode softmax of each network on the noisy part of both views (co-guessing).
        fixed = {
            n: jnp.stack([softmax32(self.forward(state, v[:b], n)[0]) for v in views]) for n in NETS
        }
        epoch = state["step"] / self.steps_per_epoch
        lam = linear_rampup(epoch, self.warmup_epochs, self.rampup_epochs, self.lambda_u)
        new, meas = state, {"lambda_u": lam, "warmup": jnp.zeros(())}
        for n, k in zip(NETS, k_mix, strict=True):
            grads, stats, m = self._mixmatch_grads(state, n, views, fixed, noisy, clean, lam, k)
            new = self._update(new, n, grads, stats)
            meas |= {f"{name}_{n}": v for name, v in m.items()}
        return {**new, "step": state["step"] + 1}, meas

    def _mixmatch_grads(self, state, n, views, fixed, noisy, clean, lam, key):
        """Gradient of Lx + lambda_u Lu + penalty for network `n` (`train`, `SemiLoss`)."""
        b = noisy["label"].shape[0]
        apply = self.apply_fn(state, n)
        # The own network's training-mode softmax on both views, as the code's no-grad passes.
        own = jnp.stack([softmax32(apply(state[n]["params"], v[:b])[0]) for v in views])
        own = jax.lax.stop_gradient(own)
        num_classes = own.shape[-1]
        w = state["clean_prob"][OTHER[n]][noisy["index"]]  # co-divide: the other's division
        labelled = w > self.p_threshold
        refined = co_refine(own, w, jax.nn.one_hot(noisy["label"], num_classes), self.temperature)
        guessed = co_guess(own, fixed[OTHER[n]], self.temperature)
        targets = jnp.concatenate(
            [
                jnp.where(labelled[:, None], refined, guessed),
                jax.nn.one_hot(clean["label"], num_classes),  # D: labelled, w = 1
            ]
        )
        slots = jnp.concatenate([labelled, jnp.ones(clean["label"].shape, bool)])
        inputs, mixed = mixup(
            key, jnp.concatenate(views), jnp.concatenate([targets, targets]), self.alpha
        )
        slots = jnp.concatenate([slots, slots])

        def loss_fn(params):
            logits, _, stats = apply(params, inputs)
            lx, lu, penalty = semi_losses(logits, mixed, slots)
            return lx + lam * lu + penalty, (stats, lx, lu, penalty)

        (loss, (stats, lx, lu, penalty)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state[n]["params"]
        )
        m = {"loss": loss, "Lx": lx, "Lu": lu, "penalty": penalty}
        return grads, stats, {**m, **division_measurements(labelled, noisy)}

    # -- evaluation
    def predict(self, state, images):
        """log of the two networks' mean softmax (the paper's test prediction)."""
        logp = [
            jax.nn.log_softmax(self.forward(state, images, n)[0].astype(jnp.float32)) for n in NETS
        ]
        return jnp.logaddexp(*logp) - jnp.log(2.0)

    def extra_predictions(self, state, images):
        """Each network alone, and the sum of their logits (Train_cifar.py's `test`)."""
        logits = {n: self.forward(state, images, n)[0] for n in NETS}
        return {**logits, "logit_sum": logits["main"] + logits["peer"]}
