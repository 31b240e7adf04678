"""Starting from an existing robust checkpoint: ours, a plain state dict, or RobustBench's cache layout."""

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, load_script, prune_context

from advprune.attacks.pgd import PGD
from advprune.checkpoint import CheckpointError, load_model, load_start_model, save_model
from advprune.config import ConfigError, check_start_checkpoints, method_spec, pretrain_params, validate
from advprune.data import load_split
from advprune.models import build_model
from advprune.models.weights import layer_sparsity
from advprune.pruning import build_method
from advprune.rehearsal import robustbench_layout
from advprune.sensitivity import module_sensitivity
from advprune.training import apply_masks

META = {"n_classes": 10, "channels": 1, "image_size": [8, 8]}
ARCH, OPTIONS = "wrn_34_10", {"width": 1}  # the network PwoA prunes, one channel wide at its stem



def _source_model():
    torch.manual_seed(0)
    model = build_model(ARCH, 10, 1, (8, 8), **OPTIONS)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def robustbench_state(model) -> dict:
    """The model's weights as RobustBench's WideResNet checkpoints hold them (the rehearsal's writer), with the
    never-used sub_block1 zeroed: loading it by mistake would change the model, and the tests would see it."""
    state = robustbench_layout(model)["state_dict"]
    return {"state_dict": {k: torch.zeros_like(v) if k.startswith("module.sub_block1.") else v for k, v in state.items()}}


def _config(digits_dir, root):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["data"]["root"] = str(Path(digits_dir).parent)
    config["archs"] = [ARCH]
    config["models"] = {ARCH: OPTIONS}
    config["pretrain"]["attack"] = {"steps": 1, "step_size": 0.1, "random_start": True}
    config["pretrain"]["robustbench"] = {"model": "Test2024Tiny", "threat_model": "Linf", "root": str(root)}
    config["prune"]["methods"] = {
        "lwm": {}, "lwm_iter": {"method": "lwm", "iterations": 2, "finetune_epochs": 1}, "random": {},
        "hydra": {"epochs": 1, "schedule": "cosine"}, "harp": {"epochs": 1, "gamma0": 0.1, "epoch_steps": None},
        "harp_channel": {"method": "harp", "granularity": "channel", "epochs": 1, "gamma0": 0.1, "epoch_steps": None},
        "pwoa": {"admm_epochs": 1, "retrain_epochs": 1, "epoch_steps": None, "finetune": "none"}, "mrpf": {}, "l1_filter": {},
        "taylor_filter": {"method": "l1_filter", "criterion": "taylor"},  # the default's criteria study names it
    }
    return validate(config)


def test_a_robustbench_checkpoint_starts_the_pipeline_and_every_method_prunes_it(digits_dir, tmp_path):
    source = _source_model()
    path = tmp_path / "models" / "digits" / "Linf" / "Test2024Tiny.pt"
    path.parent.mkdir(parents=True)
    torch.save(robustbench_state(source), path)
    config = _config(digits_dir, tmp_path / "models")
    check_start_checkpoints(config)

    dense = tmp_path / "dense.pt"
    params = pretrain_params(config, ARCH, dataset="digits")
    assert params["start"]["path"] == str(path) and "train" not in params
    load_script("pretrain").main(digits_dir, ARCH, 0, params, str(dense), str(tmp_path / "curve.csv"), str(tmp_path / "state.pt"))
    assert (tmp_path / "curve.csv").read_text() == "epoch\n"  # what downstream rules read, with no epochs
    model, ckpt = load_model(dense)
    assert ckpt["meta"]["start"]["robustbench"] == {"model": "Test2024Tiny", "dataset": "digits", "threat_model": "Linf"}
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), source(x))  # the same network, read through RobustBench's naming

    # every method starts from it (library level, on digits subsets)
    val = load_split(digits_dir, "val", n=32)
    table = pd.DataFrame(module_sensitivity(model, val.float_x(), val.y, PGD(0.1, 0.05, 1), rho=0.1, steps=1))
    for key in config["prune"]["methods"]:
        options = method_spec(config, key)
        method = build_method(options.pop("method"), **options)
        result = method.prune(copy.deepcopy(model), 0.5, prune_context(digits_dir, n_train=64, sensitivity=table))
        pruned = result.model if result.model is not None else copy.deepcopy(model)
        apply_masks(pruned, result.masks)
        rows = layer_sparsity(pruned, True, model if method.structured else None)
        assert sum(r["sparsity"] * r["n_params"] for r in rows) / sum(r["n_params"] for r in rows) > 0.2, key
        assert pruned.eval()(x).shape == (8, 10)


def test_a_missing_start_checkpoint_says_where_to_put_it(digits_dir, tmp_path):
    config = _config(digits_dir, tmp_path / "models")
    expected = str(tmp_path / "models" / "digits" / "Linf" / "Test2024Tiny.pt")
    with pytest.raises(ConfigError) as error:
        check_start_checkpoints(config)
    line = str(error.value)
    assert "\n" not in line and f"{expected} not found: put RobustBench's 'Test2024Tiny' (digits, Linf) checkpoint there" in line
    config["pretrain"].update(robustbench=None, checkpoint=str(tmp_path / "{dataset}-{arch}.pt"))
    with pytest.raises(ConfigError, match=f"'pretrain.checkpoint': {tmp_path}/digits-wrn_34_10.pt not found"):
        check_start_checkpoints(config)


def test_per_dataset_model_names_and_conflicting_keys_are_named(digits_dir, tmp_path):
    config = _config(digits_dir, tmp_path)
    config["pretrain"]["robustbench"]["model"] = {"cifar10": "Cui2020Learnable_34_10"}
    with pytest.raises(ConfigError, match="'pretrain.robustbench.model': no model named for dataset 'digits'"):
        validate(config)
    config["pretrain"]["robustbench"]["model"] = {"digits": "A", "cifar10": "B"}
    assert validate(config) and pretrain_params(config, ARCH, dataset="digits")["start"]["robustbench"]["model"] == "A"
    assert "start" not in pretrain_params(config, ARCH, "trades", dataset="digits")  # the objectives study trains its own
    config["pretrain"]["checkpoint"] = "x.pt"
    with pytest.raises(ConfigError, match="set either pretrain.checkpoint or pretrain.robustbench"):
        validate(config)


def test_our_checkpoints_and_plain_state_dicts_load_and_mismatches_are_refused(tmp_path):
    source = _source_model()
    save_model(tmp_path / "ours.pt", source, ARCH, OPTIONS, META)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    x = torch.rand(4, 1, 8, 8)
    for name, fmt in (("ours.pt", "advprune"), ("plain.pt", "state_dict")):
        model, info = load_start_model(tmp_path / name, ARCH, OPTIONS, META)
        assert info["format"] == fmt and len(info["sha256"]) == 64
        with torch.no_grad():
            assert torch.equal(model.eval()(x), source(x))

    with pytest.raises(CheckpointError, match=r"another network: model_options \{'width': 1\} \(the run: \{'width': 2\}\)"):
        load_start_model(tmp_path / "ours.pt", ARCH, {"width": 2}, META)
    with pytest.raises(CheckpointError, match="not a state dict of wrn_34_10 .* other shapes for"):
        load_start_model(tmp_path / "plain.pt", ARCH, {"width": 2}, META)
    with pytest.raises(CheckpointError, match="not a state dict of resnet18"):
        load_start_model(tmp_path / "plain.pt", "resnet18", {"width": 1}, META)
    normalising = {**robustbench_state(source)["state_dict"], "module.mu": torch.zeros(1, 3, 1, 1), "module.sigma": torch.ones(1, 3, 1, 1)}
    torch.save({"state_dict": normalising}, tmp_path / "norm.pt")
    with pytest.raises(CheckpointError, match=r"normalises its inputs inside \(mu, sigma\)"):
        load_start_model(tmp_path / "norm.pt", ARCH, OPTIONS, META)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="neither a checkpoint of this project nor a plain state dict"):
        load_start_model(tmp_path / "list.pt", ARCH, OPTIONS, META)
