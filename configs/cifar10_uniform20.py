"""CIFAR-10, 20% uniform noise (Table I).

python run.py --config=configs/cifar10_uniform20.py --workdir=workdirs/cifar10_uniform20
"""

from configs.base import setting


def get_config():
    return setting("cifar10", "uniform", 0.2)
