"""Run by tests/test_every_method.py in a subprocess (XLA's default codegen, one device): one
method on the easy problem, whole and interrupted-then-resumed; prints a JSON report."""

import json
import pathlib
import sys

from helpers import flat, restore, tiny

from ebomlc_jax import cpu, epochs, train

EPOCHS, STEPS, CUT = 8, 40, 3


class Interrupted(Exception):
    """Stands for a kill between two epochs (the last checkpoint is complete on disk)."""


def main(name: str, root: pathlib.Path) -> dict:
    config = tiny(
        {
            "method.name": name,
            "noise.rate": 0.2,
            "model.widths": (8, 16),
            "num_epochs": EPOCHS,
            "steps_per_epoch": STEPS,
            "checkpoint.keep": 1,
        }
    )
    whole = train.train_and_evaluate(config, str(root / "whole"))
    run_epoch = epochs.Runner.run_epoch

    def stop_at_the_cut(self, state, epoch):
        if epoch == CUT:
            raise Interrupted
        return run_epoch(self, state, epoch)

    epochs.Runner.run_epoch = stop_at_the_cut
    try:
        train.train_and_evaluate(config, str(root / "cut"))
    except Interrupted:
        pass
    finally:
        epochs.Runner.run_epoch = run_epoch
    at_cut = restore(root / "cut", config)[0]
    resumed = train.train_and_evaluate(config, str(root / "cut"))
    (epoch_a, a, _), (epoch_b, b, _) = (
        restore(root / "cut", config),
        restore(root / "whole", config),
    )
    a, b = flat(a), flat(b)
    differ = sorted(
        k
        for k in a.keys() | b.keys()
        if k not in a or k not in b or not (a[k].dtype == b[k].dtype and (a[k] == b[k]).all())
    )
    return {
        "accuracy": whole["final_test_accuracy"],
        "resumed_accuracy": resumed["final_test_accuracy"],
        "checkpoint_at_cut": at_cut,
        "final_epochs": [epoch_a, epoch_b],
        "leaves": len(a),
        "differ": differ,
    }


if __name__ == "__main__":
    cpu.set_cpu_flags()
    print(json.dumps(main(sys.argv[1], pathlib.Path(sys.argv[2]))))
