"""CIFAR-10, 60% uniform noise (Table I).

python run.py --config=configs/cifar10_uniform60.py --workdir=workdirs/cifar10_uniform60
"""

from configs.base import setting


def get_config():
    return setting("cifar10", "uniform", 0.6)
