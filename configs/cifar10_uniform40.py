"""CIFAR-10, 40% uniform noise (Table I).

python run.py --config=configs/cifar10_uniform40.py --workdir=workdirs/cifar10_uniform40
"""

from configs.base import setting


def get_config():
    return setting("cifar10", "uniform", 0.4)
