"""CIFAR-10, 40% flip noise (Table I).

python run.py --config=configs/cifar10_flip40.py --workdir=workdirs/cifar10_flip40
"""

from configs.base import setting


def get_config():
    return setting("cifar10", "flip", 0.4)
