"""Training learns: every registered method, on an easy problem (digits, 20% uniform noise, the
tiny config's ResNet at widths 8/16, 320 steps), ends well above chance (10%)."""

import pytest
import tiny_config
from helpers import build

from ebomlc_jax import evaluate, methods

EPOCHS, STEPS = 8, 40  # 320 steps of 32 noisy and 32 clean images
AT_LEAST = 0.5  # test accuracy; chance is 0.1


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_every_method_learns_an_easy_problem(name):
    config = tiny_config.get_config()
    config.method.name = name
    config.noise.rate = 0.2
    config.model.widths = (8, 16)
    config.num_epochs, config.steps_per_epoch = EPOCHS, STEPS
    method, runner = build(config)
    state = runner.init_state()
    for epoch in range(config.num_epochs):
        state, _ = runner.run_epoch(state, epoch)
    accuracy = float(evaluate.Evaluator(method, runner.data, 500)(state)["test_accuracy"])
    assert accuracy >= AT_LEAST, (
        f"{name}: test accuracy {accuracy:.3f} after {EPOCHS * STEPS} steps"
    )
