"""Offline demo: ResNet-32 + EBOMLC on scikit-learn's bundled 8x8 digits, 60% uniform noise.

Runs on a fresh machine with no download (about 1.5 minutes on 2 CPU cores); the default of
`python run.py`. A demo, not the comparison protocol (configs/digits_study.py): its 240 steps are
too few for some methods (MLC, GLC's second phase, Co-teaching+), see docs/results.md.

    python run.py --config=configs/digits_uniform60.py --workdir=workdirs/digits_uniform60
"""

from configs.base import setting


def get_config():
    c = setting("digits", "uniform", 0.6)
    c.num_epochs = 12  # DEVIATES from the paper's 120: a short demo
    c.data.clean_fraction = 0.1  # 14 clean images per class: 2% would leave 3
    c.data.batch_size = 64  # the set has 1,297 noisy images
    c.data.clean_batch_size = 64
    c.data.augment_pad = 1  # 8x8 images: a 1-pixel jitter
    c.log_every_steps = 10
    return c
