"""Every registered method resumes exactly: a run interrupted after an epoch and started again in
the same workdir ends with bitwise the state of a run that was never interrupted (in process; the
SIGKILL test of tests/test_train.py does the same across processes for the default method)."""

import pytest
from helpers import flat, restore, tiny

from ebomlc_jax import epochs, methods, train

EPOCHS = 4  # long enough for the epoch-level hooks of the methods that have them


class Interrupted(Exception):
    """Stands for a kill between two epochs (the last checkpoint is complete on disk)."""


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_an_interrupted_run_resumes_to_the_state_of_an_uninterrupted_one(
    name, tmp_path, monkeypatch
):
    config = tiny({"method.name": name, "num_epochs": EPOCHS})
    train.train_and_evaluate(config, str(tmp_path / "whole"))

    run_epoch = epochs.Runner.run_epoch

    def stop_before_epoch_2(self, state, epoch):
        if epoch == 2:
            raise Interrupted
        return run_epoch(self, state, epoch)

    with monkeypatch.context() as m:
        m.setattr(epochs.Runner, "run_epoch", stop_before_epoch_2)
        with pytest.raises(Interrupted):
            train.train_and_evaluate(config, str(tmp_path / "cut"))
    assert restore(tmp_path / "cut", config)[0] == 2
    train.train_and_evaluate(config, str(tmp_path / "cut"))

    (epoch_a, a, _), (epoch_b, b, _) = (
        restore(tmp_path / "cut", config),
        restore(tmp_path / "whole", config),
    )
    assert epoch_a == epoch_b == EPOCHS
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and (a[key] == b[key]).all(), key
