"""CIFAR-100, 0% uniform noise (Table II).

python run.py --config=configs/cifar100_uniform0.py --workdir=workdirs/cifar100_uniform0
"""

from configs.base import setting


def get_config():
    return setting("cifar100", "uniform", 0.0)
