"""Numeric options, test-time options and command-line option names are checked before
anything runs (issue 11 items 1, 3, 11)."""

import math

import helpers  # noqa: F401  (puts the repo root on sys.path)
import ml_collections as mlc
import pytest

from configs import demo
from rankseg_jax import config as config_lib
from rankseg_jax.config import validation


def _valid():
    c = helpers.small_train_config()
    validation.validate(c, num_devices=1, process_count=1)
    return c


def _set(c, name, value):
    *parents, leaf = name.split(".")
    node = c
    for p in parents:
        node = node[p]
    node[leaf] = value


def _float_options(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, mlc.ConfigDict):
            yield from _float_options(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            yield prefix + key


def test_every_float_option_has_a_range():
    ranged = {r[0] for r in validation.FLOAT_RANGES}
    assert sorted(set(_float_options(config_lib.base_config())) - ranged) == []


@pytest.mark.parametrize("name", sorted(_float_options(config_lib.base_config())))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0])
def test_non_finite_or_out_of_range_float_is_refused(name, bad):
    c = _valid()
    _set(c, name, bad)
    with pytest.raises(config_lib.ConfigError, match=rf"^{name}="):
        validation.validate(c, num_devices=1, process_count=1)


@pytest.mark.parametrize("name,value,match", [
    ("data.crop_size", (64,), r"data.crop_size=\(64,\) must be two"),
    ("data.test_scale", (0, 512), r"data.test_scale=\(0, 512\)"),
    ("data.std", (1.0, 0.0, 1.0), r"data.std\[1\]=0.0"),
    ("data.ratio_range", (2.0, 0.5), r"data.ratio_range=\(2.0, 0.5\) must have low <= high"),
    ("test.stride", (0, 0), r"test.stride=\(0, 0\)"),
    ("test.stride", (64, 64), r"test.stride=\(64, 64\) must not exceed test.crop_size"),
    ("test.scales", (1.0, math.nan), r"test.scales\[1\]=nan"),
    ("test.max_images", -1, r"test.max_images=-1 must be an integer >= 0"),
    ("optim.decay_mult", (("norm", math.nan),), r"optim.decay_mult\['norm'\]=nan"),
])
def test_bad_shapes_and_test_options_are_refused(name, value, match):
    c = _valid()
    _set(c, name, value)
    with pytest.raises(config_lib.ConfigError, match=match):
        validation.validate(c, num_devices=1, process_count=1)


def test_oracle_evaluation_needs_the_memory_light_path():
    c = _valid()
    c.model.rankseg.oracle, c.test.memory_light = "eval", False
    with pytest.raises(config_lib.ConfigError, match="test.memory_light=True"):
        validation.validate(c, num_devices=1, process_count=1)


@pytest.mark.parametrize("arg,match", [
    ("--config.train.num_steps=5", r"--config.train.num_steps: there is no option "
                                   r"'train.num_steps'; did you mean train.steps\?"),
    ("--config.crop_size=64", r"did you mean test.crop_size or data.crop_size\?"),
    ("--config.modl.vit.depth=2", r"did you mean model.vit.depth( or [a-z.]+)?\?"),
])
def test_misspelled_override_names_the_full_option(arg, match):
    with pytest.raises(config_lib.ConfigError, match=match):
        validation.check_override_names(["--config=configs/demo.py", arg])


def test_known_overrides_pass():
    validation.check_override_names([
        "--config=configs/demo.py", "--config.train.steps=5", "--noconfig.train.keep_best",
        "--config.model.vit", "--config.data.synthetic.num_val=3", "--workdir=/tmp/x"])


@pytest.mark.parametrize("variant", ["smoke", "steps=10", "steps=1", "steps=300,baseline"])
def test_demo_variants_pass_their_own_validation(variant):
    validation.validate(demo.get_config(variant), num_devices=1, process_count=1,
                        check_files=False)
