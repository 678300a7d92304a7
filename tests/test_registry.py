"""A method defined here, not in the package, registered and trained by `train_and_evaluate` with
no change to any other module: its config block, its checks, its epoch-level hook (a pass over
D' whose per-example losses the steps read by index) and its summary."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from ebomlc_jax import bilevel, checkpoint, methods, train
from ebomlc_jax.data import device as dd
from ebomlc_jax.data import normalize
from ebomlc_jax.errors import ConfigError, check_number
from ebomlc_jax.methods import common


@dataclasses.dataclass(frozen=True, kw_only=True)
class TableCE(common.Method):
    """CE on the noisy batch plus `clean_weight` x CE on the clean batch; before every epoch
    after the first, each example of D' gets its eval-mode loss in a table of the state, and
    each step reports the table's mean over its batch."""

    clean_weight: float = 1.0

    @classmethod
    def default_config(cls):
        return {"clean_weight": 1.0}  # weight of the clean batch's CE

    @classmethod
    def check(cls, hp):
        check_number(cls.field("clean_weight"), hp["clean_weight"], 0, float("inf"))

    def init(self, rng, sample_images):
        return {**super().init(rng, sample_images), "losses": jnp.zeros(self.num_noisy)}

    def epoch_pass(self, epoch):
        return "noisy" if epoch >= 1 else None

    def per_example(self, state, batch):
        return {
            "loss": bilevel.cross_entropies(self.predict(state, batch["image"]), batch["label"])
        }

    def begin_epoch(self, state, epoch, outputs):
        return {**state, "losses": outputs["loss"]}

    def _step(self, state, noisy, clean):
        lr, _, state = self.begin(state, 0)
        apply = self.apply_fn(state)

        def loss(params, _):
            logits, _, stats = apply(params, noisy["image"])
            clean_logits = apply(params, clean["image"])[0]
            value = bilevel.cross_entropy(logits, noisy["label"]) + self.clean_weight * (
                bilevel.cross_entropy(clean_logits, clean["label"])
            )
            return value, {"apply": stats}

        value, aux, (grads, _) = bilevel.value_and_grads(loss, state["main"]["params"], None)
        table = jnp.mean(state["losses"][noisy["index"]])
        return self.update_main(state, grads, aux["apply"]), {"loss": value, "table": table}


@pytest.fixture
def registered(monkeypatch):
    """TableCE as `method.name=table_ce`, for this test only."""
    monkeypatch.setitem(methods.REGISTRY, "table_ce", TableCE)
    monkeypatch.setattr(TableCE, "name", "table_ce")
    yield TableCE


def test_a_method_from_outside_the_package_trains_through_the_loop(registered, tmp_path):
    config = tiny_config.get_config()  # built after registration: it has the method's block
    assert config.method.table_ce.clean_weight == 1.0
    config.method.name = "table_ce"
    config.method.table_ce.clean_weight = 0.5
    config.num_epochs = 2
    summary = train.train_and_evaluate(config, str(tmp_path))
    assert summary["method"] == "table_ce" and summary["variant"] is None
    assert summary["final_meta_correction_accuracy"] is None  # no meta model: not measured
    assert summary["config"]["method"]["table_ce"] == {"clean_weight": 0.5}

    # The step of epoch 1 read the losses of its own examples, computed by the epoch pass with
    # the parameters saved at the end of epoch 0 (checkpoint 1).
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    spe = config.steps_per_epoch
    logged = {r["step"]: r["train/table"] for r in rows if "train/table" in r}
    assert logged[2] == 0.0  # epoch 0: no pass yet, the table is zeros
    data = train.load_data(config, config.seed)
    spec = train.batch_spec(config, data)
    method = train.build_method(config, data.num_classes, spe, None, data.num_noisy)
    like = method.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    state = restore_epoch(tmp_path, like, 1)
    rows_1 = np.asarray(dd.noisy_epoch_rows(dd.data_keys(config.seed), 1, spec))
    first = rows_1[0]
    images = normalize(data.images[data.noisy_index[first]], data.mean, data.std)
    logp = jax.nn.log_softmax(method.predict(state, images))
    want = -np.mean(np.asarray(logp)[np.arange(len(first)), data.noisy_label[first]])
    assert logged[spe + 1] == pytest.approx(want, rel=1e-5)


def restore_epoch(workdir, like, epoch):
    """The state of checkpoint `epoch` (the 2-epoch run keeps both)."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(workdir / "checkpoints")
    restored = manager.restore(
        epoch,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(checkpoint.to_saveable(like)),
            record=ocp.args.JsonRestore(),
        ),
    )
    manager.close()
    return checkpoint.from_saveable(restored.state, like)


def test_its_bad_hyperparameter_is_a_config_error_before_any_compute(registered, tmp_path):
    config = tiny_config.get_config()
    config.method.name = "table_ce"
    config.method.table_ce.clean_weight = -1.0
    with pytest.raises(ConfigError, match=r"method\.table_ce\.clean_weight=-1\.0 is not allowed"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "config.json").exists()
