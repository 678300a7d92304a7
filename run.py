"""Train and evaluate one configuration.

    python run.py                                             # offline demo (digits, ~1 minute)
    python run.py --config=configs/cifar100_flip40.py --workdir=workdirs/c100_flip40
    python run.py --config=configs/cifar10_uniform40.py --config.method.name=mlc --config.seed=1

Rerunning the same command in the same workdir resumes from its latest checkpoint.
"""

import os
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ebomlc_jax import cpu

if __name__ == "__main__":  # before the default config loads below (it imports JAX)
    cpu.prepare_process()

HERE = pathlib.Path(__file__).resolve().parent
config_flags.DEFINE_config_file(
    "config", str(HERE / "configs" / "digits_uniform60.py"), "Experiment config file."
)
flags.DEFINE_string(
    "workdir", None, "Run directory (default: workdirs/<config>/<method>[-<variant>]-seed<seed>)."
)
FLAGS = flags.FLAGS


def default_workdir(config_path: str, config) -> str:
    """workdirs/<config stem>/<method>[-<variant>]-seed<seed>: one per run by default."""
    from ebomlc_jax import methods

    name = methods.get(config.method.name).run_name(config)
    stem = pathlib.Path(config_path.split(":")[0]).stem
    return str(HERE / "workdirs" / stem / f"{name}-seed{config.seed}")


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO; -v 0 shows it again
        logging.set_verbosity(logging.WARNING)
    from ebomlc_jax import validate
    from ebomlc_jax.errors import ConfigError

    config = FLAGS.config
    try:  # before TensorFlow or anything else loads: a bad flag costs seconds, not minutes
        validate.validate(config)
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
    workdir = FLAGS.workdir or default_workdir(
        config_flags.get_config_filename(FLAGS["config"]), config
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow (tfds, clu) loads
    _hide_accelerators_from_tensorflow()
    from ebomlc_jax import train

    train.train_and_evaluate(config, workdir)


def _hide_accelerators_from_tensorflow():
    """tfds/tf.data only feed the host; keep TensorFlow off the GPU so JAX has all of it."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


if __name__ == "__main__":
    app.run(main)
