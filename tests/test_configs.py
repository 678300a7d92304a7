"""The setting files: each loads, validates and documents its command; the 14 CIFAR cells of
Tables I-II hold the paper's recipe; and each builds a full run under mocked tfds."""

import importlib.util
import json
import pathlib
import re

import pytest

from ebomlc_jax import train, validate

tfds = pytest.importorskip("tensorflow_datasets")

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
SETTINGS = sorted(
    p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", "base", "sweeps")
)
CIFAR = sorted(
    f"{dataset}_{kind}{rate}"
    for dataset in ("cifar10", "cifar100")
    for kind, rates in (("uniform", (0, 20, 40, 60, 80)), ("flip", (20, 40)))
    for rate in rates
)
# Two settings keep the real clean fraction (2%): with N mocked images, CIFAR-10 needs
# N >= 5000 for |D| = 100 = the clean batch, CIFAR-100 N >= 2600 for one per class.
REAL_CLEAN = {"cifar10_uniform40": 5000, "cifar100_flip40": 2600}
# The README's main command also keeps the real ResNet-32 (a compile takes 30-100 s here).
RESNET32 = "cifar100_flip40"


def load(stem: str):
    """The module of configs/<stem>.py, imported by path."""
    spec = importlib.util.spec_from_file_location(f"setting_{stem}", CONFIGS / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_the_fourteen_cifar_settings_exist():
    assert len(CIFAR) == 14
    assert set(CIFAR) <= set(SETTINGS), sorted(set(CIFAR) - set(SETTINGS))
    assert "digits_uniform60" in SETTINGS


@pytest.mark.parametrize("stem", SETTINGS)
def test_setting_loads_validates_and_documents_its_command(stem):
    module = load(stem)
    config = module.get_config()
    validate.validate(config)
    assert f"python run.py --config=configs/{stem}.py" in module.__doc__


@pytest.mark.parametrize("stem", CIFAR)
def test_cifar_setting_is_the_paper_recipe_with_its_noise(stem):
    dataset, kind, rate = re.fullmatch(r"(cifar10|cifar100)_(uniform|flip)(\d+)", stem).groups()
    config = load(stem).get_config()
    assert config.data.dataset == dataset
    assert config.noise.kind == kind
    assert config.noise.rate == pytest.approx(int(rate) / 100)
    # Nothing else differs from base.py.
    mine, base = flat(config.to_dict()), flat(load("base").get_config().to_dict())
    differ = sorted(k for k in mine.keys() | base.keys() if mine.get(k) != base.get(k))
    assert set(differ) <= {"data.dataset", "noise.kind", "noise.rate"}, differ


def test_base_holds_the_paper_recipe():
    c = load("base").get_config()
    assert c.num_epochs == 120
    assert c.data.batch_size == 100 and c.data.clean_batch_size == 100
    assert c.optim.lr == 0.1 and c.optim.momentum == 0.9 and c.optim.weight_decay == 5e-4
    assert [round(f * c.num_epochs) for f in c.optim.decay_at] == [80, 100]
    assert c.optim.decay_factor == 0.1
    assert c.optim.meta_lr == 3e-4
    e = c.method.ebomlc
    assert (e.rho, e.xi, e.delta, e.k) == (0.2, 0.5, 0.25, 1)
    assert (c.method.mlc_d.k, c.method.mlc_d.delta) == (5, 0.5)
    assert c.data.clean_fraction == 0.02
    assert c.model.blocks_per_stage == 5 and tuple(c.model.widths) == (16, 32, 64)  # ResNet-32
    assert c.method.name == "ebomlc"


@pytest.mark.parametrize("stem", CIFAR)
def test_cifar_setting_runs_one_step_on_mocked_tfds(stem, tmp_path, monkeypatch):
    config = load(stem).get_config()
    num_classes = 10 if config.data.dataset == "cifar10" else 100
    config.num_epochs, config.steps_per_epoch, config.figures = 1, 1, False
    # The session has 4 fake CPU devices; the clean batch's halves of 50 do not split over 4.
    config.parallel.num_devices = 1
    if stem != RESNET32:  # the same program with a smaller model
        config.model.blocks_per_stage, config.model.widths = 1, (4, 8)
    if stem in REAL_CLEAN:
        num_examples = REAL_CLEAN[stem]
    else:  # a larger clean fraction on fewer images (|D| = 100)
        config.data.clean_fraction = 0.1
        num_examples = 1000
    validate.validate(config)

    built = []

    def spy(*args, **kwargs):
        built.append(real_build_data(*args, **kwargs))
        return built[-1]

    real_build_data = train.build_data
    monkeypatch.setattr(train, "build_data", spy)
    with tfds.testing.mock_data(num_examples=num_examples):
        summary = train.train_and_evaluate(config, str(tmp_path))

    (data,) = built
    assert data.images.shape == (num_examples, 32, 32, 3)
    assert data.test_images.shape == (num_examples, 32, 32, 3)
    assert data.num_classes == num_classes
    assert data.num_clean == 100
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert summary["dataset"] == config.data.dataset
    assert summary["noise_kind"] == config.noise.kind
    assert summary["noise_rate"] == config.noise.rate
    assert 0.0 <= summary["final_test_accuracy"] <= 1.0
    assert summary["config"]["model"]["blocks_per_stage"] == (5 if stem == RESNET32 else 1)
    assert summary["config"]["data"]["clean_fraction"] == (0.02 if stem in REAL_CLEAN else 0.1)
    confusion = json.loads((tmp_path / "meta_confusion.json").read_text())
    assert confusion["num_classes"] == num_classes
    assert (tmp_path / "checkpoints" / "1").is_dir()


def test_the_digits_protocol_validates_and_trains_a_few_steps(tmp_path):
    config = load("digits_study").get_config()
    validate.validate(config)
    # The protocol the docstring and docs/results.md describe.
    assert config.data.dataset == "digits" and config.num_epochs == 120
    assert config.model.blocks_per_stage == 1 and tuple(config.model.widths) == (16, 32, 64)
    assert config.data.clean_fraction == 0.1 and config.data.batch_size == 64
    config.num_epochs, config.steps_per_epoch = 2, 3
    summary = train.train_and_evaluate(config, str(tmp_path))
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [h for h in history if "eval/test_accuracy" in h]
    assert [h["eval/epoch"] for h in evals] == [1, 2]
    assert summary["config"]["model"]["blocks_per_stage"] == 1
    assert summary["realised_noise_rate"] == pytest.approx(0.6 * 9 / 10, abs=0.03)
    assert 0.0 <= summary["final_meta_accuracy_on_mislabelled"] <= 1.0
