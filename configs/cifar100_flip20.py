"""CIFAR-100, 20% flip noise (Table II).

python run.py --config=configs/cifar100_flip20.py --workdir=workdirs/cifar100_flip20
"""

from configs.base import setting


def get_config():
    return setting("cifar100", "flip", 0.2)
