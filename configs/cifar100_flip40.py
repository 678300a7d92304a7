"""CIFAR-100, 40% flip noise (Table II).

python run.py --config=configs/cifar100_flip40.py --workdir=workdirs/cifar100_flip40
"""

from configs.base import setting


def get_config():
    return setting("cifar100", "flip", 0.4)
