"""A tiny, fast run for tests: digits, a 2-stage ResNet of width 4/8, 3 steps per epoch.

python run.py --config=tests/tiny_config.py --workdir=/tmp/tiny
"""

from configs.base import setting


def get_config():
    c = setting("digits", "uniform", 0.6)
    c.num_epochs = 3
    c.steps_per_epoch = 3
    c.optim.decay_at = (2 / 3,)  # after epoch 2
    c.data.clean_fraction = 0.1
    c.data.batch_size = 32
    c.data.clean_batch_size = 32
    c.data.augment_pad = 1
    c.model.blocks_per_stage = 1
    c.model.widths = (4, 8)
    c.model.meta_embed_dim = 8
    c.model.meta_hidden_dim = 8
    c.eval.batch_size = 128
    c.log_every_steps = 2
    c.figures = False
    return c
