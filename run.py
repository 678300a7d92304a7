"""Train and evaluate one configuration.

    python run.py                                             # offline demo (digits, ~1 minute)
    python run.py --config=configs/cifar100_flip40.py --workdir=workdirs/c100_flip40
    python run.py --config=configs/cifar10_uniform40.py --config.method.name=mlc --config.seed=1

Rerunning the same command in the same workdir resumes from its latest checkpoint.
"""

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


def load_config():
    """FLAGS.config; a file that cannot be loaded is a one-line ConfigError naming the choices."""
    from ebomlc_jax.errors import allowed

    try:
        config = FLAGS.config
        config.method  # noqa: B018  (a failed load raises when the config is first read)
        return config
    except OSError as e:
        given = config_flags.get_config_filename(FLAGS["config"])
        files = sorted(
            str(p.relative_to(HERE))
            for p in (HERE / "configs").glob("*.py")
            if "def get_config" in p.read_text()
        )
        raise allowed(
            "--config", given, f"a .py file with get_config(), e.g. one of {files}"
        ) from e


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # orbax logs every save at INFO; -v 0 shows it again
        logging.set_verbosity(logging.WARNING)
    from ebomlc_jax import validate
    from ebomlc_jax.errors import ConfigError

    try:  # before TensorFlow or anything else loads: a bad flag costs seconds, not minutes
        config = load_config()
        validate.validate(config)
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
    workdir = FLAGS.workdir or default_workdir(
        config_flags.get_config_filename(FLAGS["config"]), config
    )
    from ebomlc_jax import train

    train.train_and_evaluate(config, workdir)


if __name__ == "__main__":
    app.run(main)
