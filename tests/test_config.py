import pytest

from metarl_robot.algos.context_ppo import TrainConfig
from metarl_robot.config import ConfigError, load_config, save_config


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(TrainConfig, None, ["ppo.lr=1e-3", "policy.hidden_sizes=[32, 32]", "iterations=5"])
    assert cfg.ppo.lr == 1e-3 and cfg.policy.hidden_sizes == (32, 32) and cfg.iterations == 5
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(TrainConfig, tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"ppo": {"lrr": 1}}, r"unknown config key ppo\.'lrr'.*'lr'"),
        ({"iterations": "many"}, r"iterations: expected an integer"),
        ({"policy": {"hidden_sizes": 64}}, r"policy\.hidden_sizes: expected a list"),
        ({"asynchronous": "yes"}, r"asynchronous: expected true or false"),
        ({"ppo": {"gamma": 2.0}}, r"ppo: gamma must be in"),
    ],
)
def test_errors_name_the_bad_key(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, data)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainConfig, None, ["ppo.lr"])
