"""Train and evaluate one configuration.

    python run.py                                             # offline demo (digits, ~2 min)
    python run.py --config=configs/cifar100_flip40.py --workdir=workdirs/c100_flip40
    python run.py --config=configs/cifar10_uniform40.py --config.method.name=mlc --config.seed=1

Rerunning the same command in the same workdir resumes from its latest checkpoint.
"""

import os
import pathlib

if __name__ == "__main__":  # on CPU: restart once with huge pages for malloc (ebomlc_jax/host.py)
    from ebomlc_jax import host

    host.reexec_with_huge_pages()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow (via tfds/clu) loads

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

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
    name = config.method.name + (
        f"-{config.method.variant}" if config.method.name == "ebomlc" else ""
    )
    stem = pathlib.Path(config_path.split(":")[0]).stem
    return str(HERE / "workdirs" / stem / f"{name}-seed{config.seed}")


def main(argv):
    del argv
    from ebomlc_jax import xla_cpu

    xla_cpu.set_cpu_flags()  # before JAX starts
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO; -v 0 shows it again
        logging.set_verbosity(logging.WARNING)
    _hide_accelerators_from_tensorflow()
    from ebomlc_jax import train  # after absl parsed the flags

    config = FLAGS.config
    workdir = FLAGS.workdir or default_workdir(
        config_flags.get_config_filename(FLAGS["config"]), config
    )
    train.train_and_evaluate(config, workdir)


def _hide_accelerators_from_tensorflow():
    """tfds/tf.data only feed the host; keep TensorFlow off the GPU so JAX has all of it."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


if __name__ == "__main__":
    app.run(main)
