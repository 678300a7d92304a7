"""The paper's recipe (Section VI-A; docs/reference_notes.md 1-3) and the settings of Tables I-II.

Every setting file calls `setting(dataset, kind, rate)`; the fields below are the defaults.
Run any config with overrides, e.g.

    python run.py --config=configs/cifar100_flip40.py --config.method.name=mlc --config.seed=1
"""

import ml_collections

from ebomlc_jax import methods


def get_config() -> ml_collections.ConfigDict:
    """Defaults: EBOMLC on CIFAR-10 with 40% uniform noise, the paper's recipe."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # noise draw, clean/noisy split, init, data order, dropout (paper: 3 seeds, unnamed)
    c.num_parallel_seeds = 1  # > 1: seeds seed, seed+1, ... vmapped as one program
    c.num_epochs = 120
    c.steps_per_epoch = 0  # 0: a full pass over D' (490 on CIFAR); > 0 caps it (smoke tests)

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "cifar10"  # cifar10 | cifar100 (tfds) | digits (scikit-learn, offline)
    c.data.data_dir = ""  # tfds data_dir; "" = ~/tensorflow_datasets
    c.data.download = False  # let tfds download/prepare CIFAR (needs internet or a manual tarball)
    c.data.clean_fraction = 0.02  # |D| / |train|, balanced per class (100/class on CIFAR-10)
    c.data.batch_size = 100  # noisy batch
    c.data.clean_batch_size = 100  # clean batch
    c.data.augment = True  # DEVIATES from the paper text ("no data augmentation"); released code
    c.data.augment_pad = 4  # reflect-pad, random crop, horizontal flip
    c.data.input = "device"  # device (whole train set on the accelerator) | host | tf_data
    c.data.scan_epochs = True  # device input: one compiled lax.scan per epoch (False: a Python
    #   loop of jitted steps; same numbers, for debugging or step-level profiling)

    c.noise = ml_collections.ConfigDict()
    c.noise.kind = "uniform"  # uniform | flip (one fixed random other class) | pair (i -> i+1)
    c.noise.rate = 0.4
    c.noise.uniform_includes_true_class = True  # DEVIATES from the paper text ("to another
    #   class"): the released code draws uniformly over all K classes (realised rate r(K-1)/K)

    c.model = ml_collections.ConfigDict()
    c.model.blocks_per_stage = 5  # 5 blocks x 3 stages = ResNet-32 (the paper)
    c.model.widths = (16, 32, 64)
    c.model.dtype = "float32"  # float32 | bfloat16 (compute dtype of the main model)
    c.model.meta_embed_dim = 128
    c.model.meta_hidden_dim = 128
    c.model.meta_dropout = 0.3  # released code (microsoft/MLC: 0)
    c.model.meta_batch_norm = True  # released code (microsoft/MLC: False)

    # The method to train (`name`) and one block of hyperparameters per registered method,
    # declared by the method's own module (ebomlc_jax/methods/<name>.py), e.g. method.ebomlc.rho.
    c.method = methods.config()

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.1  # main model SGD
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.optim.decay_at = (2 / 3, 5 / 6)  # lr x decay_factor after these fractions of the epochs
    #   (the paper's epochs 80 and 100 of 120)
    c.optim.decay_factor = 0.1
    c.optim.meta_lr = 3e-4  # meta model's AMSGrad: DEVIATES from the paper's "Adam" (both
    #   released codes use AMSGrad)

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 500
    c.eval.meta_correction = True  # meta model's correction accuracy on D' every epoch

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.keep = 3  # last N epochs, plus the best by clean accuracy
    c.checkpoint.asynchronous = True

    c.parallel = ml_collections.ConfigDict()
    c.parallel.mode = "jit"  # jit (sharded batch over a device mesh) | pmap
    c.parallel.num_devices = 0  # 0: all local devices
    c.parallel.distributed = False  # multi-host: call jax.distributed.initialize() first
    c.parallel.seeds = "vmap"  # num_parallel_seeds > 1: vmap (one batched program) | map (seeds
    #   in turn inside one program; faster on CPU, where vmapped convolutions become grouped ones)

    c.log_every_steps = 100
    c.figures = True  # write curves.png and the correction heatmap at the end
    c.resume_with_changed_config = False  # allow resuming a workdir whose config differs
    return c


def setting(dataset: str, kind: str, rate: float) -> ml_collections.ConfigDict:
    """One cell of Tables I-II: the defaults with this dataset and noise."""
    c = get_config()
    c.data.dataset, c.noise.kind, c.noise.rate = dataset, kind, rate
    return c
