"""CIFAR-10, 0% uniform noise (Table I).

python run.py --config=configs/cifar10_uniform0.py --workdir=workdirs/cifar10_uniform0
"""

from configs.base import setting


def get_config():
    return setting("cifar10", "uniform", 0.0)
