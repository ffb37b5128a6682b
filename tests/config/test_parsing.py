"""Config from YAML files and flags (``config/parsing.py``): one declaration, a strict YAML
schema, flags over file over defaults; the shipped configs say what they claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ignite_rn50.config.parsing import config_from_dashboard, load_yaml, parse_config, save_config
from ignite_rn50.errors import UserError
from tests.helpers import REPO, assert_one_line_error, run_cli


def test_reference_config_is_the_seed_recipe() -> None:
    cfg = parse_config(["--config", str(REPO / "configs/resnet50_cifar100.yaml"),
                        "--data", "/nonexistent"])
    assert (cfg.depth, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs) == \
        (50, 128, 0.1, 0.9, 5e-4, 200)
    assert (cfg.lr_milestones, cfg.lr_gamma, cfg.nesterov) == ([60, 120, 160], 0.2, False)


SEED_RECIPES = {  # config -> (global batch, lr, lr policy): the package's rows
    "resnet50_cifar100": (128, 0.1, "step"), "resnet50_cifar100_1p_bs16": (16, 0.1, "step"),
    "resnet50_cifar100_cos": (256, 0.2, "cosine"),
    "resnet50_cifar100_1p_bs32": (32, 0.2, "cosine"),
    "resnet50_cifar100_1p_bs512": (512, 0.1, "step"),
    "resnet50_cifar100_8p_bs4096": (4096, 0.1, "step")}


MIX_RECIPES = {"resnet50_cifar100_bs256_mix": 256, "resnet50_cifar100_8p_bs2048_mix": 2048}


@pytest.mark.parametrize("name", [*SEED_RECIPES, *MIX_RECIPES, "resnet50_cifar10", "quickstart"])
def test_shipped_configs_validate_to_their_recipe(name: str) -> None:
    """Each file passes the full validation as the trainer would run it, and says what it
    claims to: every key it sets reaches the Config unchanged."""
    path = REPO / "configs" / f"{name}.yaml"
    cfg = parse_config(["--config", str(path), "--data", "/nonexistent"])
    for key, value in load_yaml(path).items():
        assert getattr(cfg, key) == value, key
    if name in SEED_RECIPES:
        assert (cfg.batch_size, cfg.lr, cfg.lr_policy) == SEED_RECIPES[name]
        assert (cfg.depth, cfg.epochs, cfg.momentum, cfg.weight_decay) == (50, 200, 0.9, 5e-4)
        # the package's precision: apex O2 (static scale 1024) where it imports on an NPU
        assert (cfg.amp_backend, cfg.opt_level, cfg.loss_scale) == ("auto", "O2", 1024.0)
        assert cfg.lr_policy == "step" or (cfg.min_lr == 0.0 and cfg.warmup_iters == 0)
    if name in MIX_RECIPES:  # resnet50_8xb256_cifar100.py: lr 0.1 x 256 / 16, not scaled on 8p
        assert (cfg.batch_size, cfg.lr, cfg.lr_policy, cfg.min_lr) == \
            (MIX_RECIPES[name], 1.6, "cosine", 0.0)
        assert (cfg.warmup_epochs, cfg.warmup_factor, cfg.warmup_iters) == (20, 1e-3, 0)
        assert (cfg.mixup_alpha, cfg.mixup_prob, cfg.cutmix_alpha, cfg.cutmix_prob,
                cfg.label_smoothing) == (1.0, 0.5, 1.0, 0.5, 0.1)
    if name == "resnet50_cifar10":  # mmcls resnet50_8xb16_cifar10
        assert (cfg.dataset, cfg.batch_size, cfg.lr, cfg.weight_decay) == \
            ("cifar10", 128, 0.1, 1e-4)
        assert (cfg.lr_milestones, cfg.lr_gamma, cfg.epochs) == ([100, 150], 0.1, 200)
    if name != "quickstart":
        assert (cfg.depth, cfg.amp_backend, cfg.opt_level, cfg.loss_scale) == \
            (50, "auto", "O2", 1024.0)


def test_flags_override_yaml_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.3\nepochs: 7\ndataset: synthetic\n")
    cfg = parse_config(["--config", str(path), "--epochs", "9"])
    assert (cfg.lr, cfg.epochs, cfg.momentum) == (0.3, 9, 0.9)


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: synthetic\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"unknown key 'learning_rate' in config file .*bad\.yaml"):
        load_yaml(path)


@pytest.mark.parametrize("text, key", [("epochs: ten\n", "epochs"), ("lr: true\n", "lr"),
                                       ("lr_milestones: 60\n", "lr_milestones"),
                                       ("amp: 1\n", "amp")])
def test_wrong_type_names_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"key '{key}' in config file .*bad.yaml must be"):
        load_yaml(path)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = parse_config(["--dataset", "synthetic", "--lr", "0.2", "--loss-scale", "1024"])
    save_config(cfg, tmp_path / "config.yaml")
    again = parse_config(["--config", str(tmp_path / "config.yaml")])
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["loss_scale"] == 1024.0


def test_world_size_means_nodes_in_yaml_flags_and_saved_config(tmp_path: Path) -> None:
    """The package's --world-size counts nodes: the attribute is ``nodes``, the YAML key and
    the flag stay ``world_size`` / ``--world-size`` (older config.yaml files load)."""
    path = tmp_path / "c.yaml"
    path.write_text("dataset: synthetic\nworld_size: 2\nnproc: 4\nbatch_size: 64\n")
    cfg = parse_config(["--config", str(path)])
    assert (cfg.nodes, cfg.nproc, cfg.processes) == (2, 4, 8)
    assert parse_config(["--dataset", "synthetic", "--world-size", "4", "--node-rank",
                         "2"]).nodes == 4
    save_config(cfg, tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert saved["world_size"] == 2 and "nodes" not in saved


def test_unknown_config_key_cli_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("dataset: synthetic\nbatchsize: 16\n")
    assert_one_line_error(run_cli(["--config", str(path)]), "unknown key 'batchsize'",
                          str(path))


# --- values stored on a dashboard (ClearML under an agent: strings, as the UI keeps them) -----

def test_dashboard_strings_read_as_their_flags_would_be() -> None:
    base = parse_config(["--dataset", "synthetic"])
    cfg = config_from_dashboard(base, {
        "training/lr": "1e-3", "training/epochs": "7", "training/batch_size": "64",
        "training/lr_milestones": "[5, 9]", "output/clearml_tags": "a, b",
        "training/eval_batch_size": "", "data/data": "None", "device/amp": "true",
        "training/momentum": 0.8})  # HPO may hand a number: taken as it is
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (0.001, 7, 64)
    assert cfg.lr_milestones == [5, 9] and cfg.clearml_tags == ["a", "b"]
    assert cfg.eval_batch_size is None and cfg.data is None and cfg.amp is True
    assert cfg.momentum == 0.8 and cfg.depth == base.depth  # what was not stored stays
    # what a local run stores (our values, as ClearML writes them) reads back unchanged
    stored = {f"{section}/{key}": "" if value is None else
              (json.dumps(value) if isinstance(value, list) else str(value))
              for section, values in base.groups().items() for key, value in values.items()}
    assert config_from_dashboard(base, stored) == base


@pytest.mark.parametrize(("stored", "needle"), [
    ({"training/lr": "abc"}, "ClearML parameter training/lr must be number, got 'abc'"),
    ({"training/epochs": "7.5"}, "ClearML parameter training/epochs must be integer"),
    ({"training/lr": "-1"}, "ClearML parameter training/lr: --lr must be positive"),
    ({"model/depth": "19"}, "ClearML parameter model/depth: --depth must be one of")])
def test_a_bad_dashboard_value_names_the_parameter(stored: dict, needle: str) -> None:
    with pytest.raises(UserError) as info:
        config_from_dashboard(parse_config(["--dataset", "synthetic"]), stored)
    assert needle in str(info.value) and "\n" not in str(info.value)
