"""CIFAR-10, 20% flip noise (Table I).

python run.py --config=configs/cifar10_flip20.py --workdir=workdirs/cifar10_flip20
"""

from configs.base import setting


def get_config():
    return setting("cifar10", "flip", 0.2)
