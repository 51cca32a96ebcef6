import pytest

from lt_ssl.config import Config, apply_overrides, config_hash, from_dict, load_config, to_yaml
from lt_ssl.errors import ConfigError
from tests.conftest import QUICKSTART

import yaml


def test_quickstart_loads_and_round_trips():
    cfg = load_config(QUICKSTART)
    assert cfg.data.dataset == "digits" and cfg.cluster.k == 3
    again = from_dict(yaml.safe_load(to_yaml(cfg)))
    assert again == cfg and config_hash(again) == config_hash(cfg)


@pytest.mark.parametrize("path", ["configs/cifar10_lt.yaml", "configs/cifar100_lt.yaml"])
def test_cifar_configs_need_a_root_and_load_with_one(path):
    with pytest.raises(ConfigError, match="data.root"):
        load_config(path)
    cfg = load_config(path, ["data.root=/data/x", "imbalance=10"])
    assert cfg.data.imbalance == 10.0 and cfg.backbone == "resnet18_cifar"


def test_overrides_dotted_and_unambiguous_leaf():
    cfg = load_config(None, ["cluster.k=7", "imbalance=10", "expert.train.lr=0.1"])
    assert (cfg.cluster.k, cfg.data.imbalance, cfg.expert.train.lr) == (7, 10.0, 0.1)


@pytest.mark.parametrize("override, message", [
    (["nope=1"], "unknown config key 'nope'"),
    (["epochs=3"], "ambiguous"),
    (["cluster.k=three"], "'cluster.k' must be int"),
    (["cluster.k=true"], "'cluster.k' must be int"),
    (["data.imbalance=0"], "imbalance must be >= 1"),
    (["data.imbalance=-5"], "imbalance must be >= 1"),
    (["cluster.k=0"], "cluster.k must be >= 1"),
    (["method.temperature=0.5"], "unknown config key 'method.temperature'; known keys here: method.name, method.proj_dim"),
    (["baseline.method.temperature=0.5"], "unknown config key 'baseline.method.temperature'"),
    (["method.name=byol"], "config key 'method.name' must be one of simsiam, simclr"),
    (["method.name=simclr", "method.temperature=0"], "method.temperature must be > 0, got 0"),
    (["method.proj_layers=4"], "config key 'method.proj_layers' must be one of 2, 3, got 4"),
    (["data.dataset=svhn"], "must be one of digits"),
    (["pretrain.optimizer=adam"], "'pretrain.optimizer' must be one of sgd, lars, adamw"),
    (["backbone=vit"], "'backbone' must be one of resnet18_cifar, resnet18, small_cnn, vit_tiny, vit_tiny_p7"),
    (["method.name=msn"], "method.name=msn drops image patches and needs a ViT backbone, got backbone=small_cnn; set "
                          "backbone=vit_tiny"),
    (["baseline.enabled=true", "baseline.method.name=pmsn"], "baseline.method.name=pmsn drops image patches"),
    (["cluster"], "not key=value"),
    (["augment.hue=0.7"], r"augment.hue must be <= 0.5 \(as torchvision's ColorJitter\), got 0.7"),
    (["device=tpu"], "device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_unknown_nested_key_in_yaml_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pretrain:\n  epochs: 3\n  temprature: 0.5\n")
    with pytest.raises(ConfigError, match="unknown config key 'pretrain.temprature'"):
        load_config(path)


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("pretrain:\n  weight_decay: 1e-5\n")
    assert load_config(path).pretrain.weight_decay == 1e-5


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_config_is_frozen_and_overrides_do_not_mutate_input():
    raw = {"cluster": {"k": 2}}
    apply_overrides(raw, ["cluster.k=5"])
    assert raw == {"cluster": {"k": 2}}
    with pytest.raises(Exception):
        Config().seed = 3  # type: ignore[misc]


def test_method_name_override_starts_from_that_methods_defaults():
    # The quickstart's method keys are SimSiam's; switching method must not carry them over.
    cfg = load_config(QUICKSTART, ["method.temperature=0.2", "method.name=simclr"])
    assert cfg.method.name == "simclr" and cfg.method.temperature == 0.2 and cfg.method.proj_dim == 128
    # The same name keeps the file's keys.
    assert load_config(QUICKSTART, ["method.name=simsiam"]).method == load_config(QUICKSTART).method


def test_method_section_without_name_is_the_default_method(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method:\n  proj_dim: 64\n")
    m = load_config(path).method
    assert (m.name, m.proj_dim) == ("simsiam", 64)


def test_config_hash_covers_only_what_changes_results():
    cfg = load_config(QUICKSTART)
    same = ["device=cpu", "metrics.pushgateway_url=http://pgw:9091", "metrics.job=other", "name=renamed",
            "data.root=/elsewhere", "data.download=true"]
    for override in same:
        assert config_hash(load_config(QUICKSTART, [override])) == config_hash(cfg), override
    for override in ["seed=1", "method.proj_dim=256", "cluster.k=4", "augment.size=12", "data.imbalance=20"]:
        assert config_hash(load_config(QUICKSTART, [override])) != config_hash(cfg), override
