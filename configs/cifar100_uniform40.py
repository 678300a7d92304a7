"""CIFAR-100, 40% uniform noise (Table II).

python run.py --config=configs/cifar100_uniform40.py --workdir=workdirs/cifar100_uniform40
"""

from configs.base import setting


def get_config():
    return setting("cifar100", "uniform", 0.4)
