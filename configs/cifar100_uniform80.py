"""CIFAR-100, 80% uniform noise (Table II).

python run.py --config=configs/cifar100_uniform80.py --workdir=workdirs/cifar100_uniform80
"""

from configs.base import setting


def get_config():
    return setting("cifar100", "uniform", 0.8)
