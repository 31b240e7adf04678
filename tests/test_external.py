"""Checkpoints made elsewhere, read into our networks (advprune/interop/layouts.py): HYDRA's scores and dense
exports, HARP's scores and rates, RobustBench's zoo files, the AP benchmark's and plain state dicts; everything
that does not fit is refused in one line, a missing file before any job runs."""

import subprocess

import pytest
import torch
import yaml
from conftest import REPO, SNAKEMAKE, env_with_repo, planned

from advprune.checkpoint import CheckpointError
from advprune.config import ConfigError, check_external_checkpoints, read_config_file, validate
from advprune.interop.layouts import read_external
from advprune.interop.naming import to_field
from advprune.models import build_model
from advprune.models.weights import prunable_weights
from advprune.rehearsal import robustbench_layout

META = {"n_classes": 10, "channels": 1, "image_size": [8, 8]}
OPTIONS = {"width": 2}


def _model(arch="resnet18", seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, 10, 1, (8, 8), **OPTIONS)
    with torch.no_grad():  # BatchNorm statistics a fresh network would not have
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _read(path, layout, sparsity, arch="resnet18", tolerance=0.01, **kwargs):
    return read_external(path, layout, arch, OPTIONS, META, sparsity, True, tolerance, **kwargs)


def _kept_top(scores, n_kept):
    """Reference mask: the n_kept largest |scores| (torch.topk, not the argsort the reader uses)."""
    mask = torch.zeros(scores.numel())
    mask[scores.abs().flatten().topk(n_kept).indices] = 1
    return mask.view_as(scores)


@pytest.mark.parametrize("arch", ["resnet18", "vgg16_bn"])
def test_hydra_scores_are_folded_per_layer_and_the_dense_export_loads_the_same(tmp_path, arch):
    model = _model(arch)
    state = to_field(model.state_dict(), model, arch)
    weights = prunable_weights(model, True)
    field = dict(zip(weights, to_field(weights, model, arch)))  # our weight name -> HYDRA's
    scores = {field[k].removesuffix("weight") + "popup_scores": torch.randn_like(w) for k, w in weights.items()}
    # HYDRA's train.py checkpoint, DataParallel prefixes included
    torch.save({"epoch": 20, "arch": arch, "state_dict": {f"module.{k}": v for k, v in {**state, **scores}.items()}, "best_prec1": 50.0},
               tmp_path / "checkpoint.pth.tar")
    read, info = _read(tmp_path / "checkpoint.pth.tar", "hydra", 0.95, arch)
    assert info["scores_folded"] == "hydra" and abs(info["sparsity_measured"] - 0.95) < 0.01 and info["channels_removed"] == 0
    ours = read.state_dict()
    for name, weight in weights.items():
        s = scores[field[name].removesuffix("weight") + "popup_scores"]
        n_kept = s.numel() - int((1 - 0.05) * s.numel())  # HYDRA keeps all but int((1 - k) n), k = 0.05
        assert torch.equal(ours[name], weight * _kept_top(s, n_kept)), name
    # its --save-dense export: the folded weights in the same names, no scores
    torch.save({"epoch": 20, "state_dict": to_field(ours, model, arch)}, tmp_path / "checkpoint_dense.pth.tar")
    dense, info = _read(tmp_path / "checkpoint_dense.pth.tar", "hydra", 0.95, arch)
    assert info["scores_folded"] is None and all(torch.equal(a, b) for a, b in zip(dense.state_dict().values(), ours.values()))


def test_harp_rates_and_scores_are_folded_by_weight_and_by_input_channel(tmp_path):
    model = _model()
    state = dict(model.state_dict())
    weights = prunable_weights(model, True)
    torch.manual_seed(1)
    logits = {name: torch.randn(()) for name in weights}
    for name, w in weights.items():
        prefix = name.removesuffix("weight")
        state[prefix + "k_score"] = logits[name]
        # the first conv's scores in the channel layout of HARP's fine-tuned checkpoints: one per input channel
        state[prefix + "popup_scores"] = torch.randn(1, w.shape[1], 1, 1) if name == "layer1.0.conv1.weight" else torch.randn_like(w)
    torch.save({"state_dict": state}, tmp_path / "harp.pth.tar")
    read, info = _read(tmp_path / "harp.pth.tar", "harp", 0.9, tolerance=1.0, harp_alpha=0.1)
    assert info["scores_folded"] == "harp"
    r_min = 0.1 * 0.1  # alpha * k
    for name, w in weights.items():
        rate = r_min + (1 - r_min) * torch.sigmoid(logits[name].double()).item()
        scores = state[name.removesuffix("weight") + "popup_scores"]
        got = read.state_dict()[name]
        if scores.shape == w.shape:
            assert torch.equal(got, w * _kept_top(scores, w.numel() - int((1 - rate) * w.numel()))), name
        else:
            kept_channels = _kept_top(scores.flatten(), round(rate * w.shape[1])).bool()
            assert torch.equal(got[:, kept_channels], w[:, kept_channels]) and not got[:, ~kept_channels].any() and (~kept_channels).any()
    # claimed dense: HARP's pretraining mode keeps every weight
    dense, _ = _read(tmp_path / "harp.pth.tar", "harp", 0.0)
    assert all(torch.equal(dense.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_robustbench_zoo_file_and_a_plain_state_dict_compute_what_the_source_computes(tmp_path):
    source = _model("wrn_28_4")
    torch.save(robustbench_layout(source), tmp_path / "zoo.pt")  # 'module.' prefixes, RobustBench names, sub_block1
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    x = torch.rand(4, 1, 8, 8)
    for name, layout in (("zoo.pt", "robustbench"), ("plain.pt", "state_dict")):
        read, info = _read(tmp_path / name, layout, 0.0, "wrn_28_4")
        assert len(info["sha256"]) == 64 and info["sparsity_measured"] == 0
        with torch.no_grad():
            assert torch.equal(read.eval()(x), source(x)), layout


def test_what_does_not_fit_is_refused_in_one_line(tmp_path):
    model = _model()
    state = to_field(model.state_dict(), model, "resnet18")
    cases = {
        "missing": ({k: v for k, v in state.items() if k != "layer2.0.shortcut.1.running_mean"}, "benchmark", 0.0,
                    "missing layer2.0.shortcut.1.running_mean"),
        "unexpected": ({**state, "layer9.weight": torch.zeros(1)}, "benchmark", 0.0, "unexpected layer9.weight"),
        "shape": ({**state, "linear.weight": torch.zeros(5, 16)}, "benchmark", 0.0, "other shapes for linear.weight"),
        "claim": (state, "benchmark", 0.9, "claims sparsity 0.9 but 0.0000 of its prunable weights are zero"),
        "scores": ({**state, "conv1.popup_scores": torch.zeros_like(state["conv1.weight"])}, "benchmark", 0.0, "give layout hydra or harp"),
        "rates": ({**state, "conv1.popup_scores": torch.zeros_like(state["conv1.weight"])}, "harp", 0.5, "without its layer's rate conv1.k_score"),
        "normalising": ({**state, "mu": torch.zeros(1, 1, 1, 1)}, "state_dict", 0.0, "normalises its inputs inside (mu)"),
    }
    for name, (content, layout, sparsity, message) in cases.items():
        torch.save({"net": content}, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError) as error:
            _read(tmp_path / f"{name}.pt", layout, sparsity)
        assert message in str(error.value) and str(error.value).startswith(str(tmp_path)) and "\n" not in str(error.value), name
    with pytest.raises(CheckpointError, match="layout benchmark has no small_cnn"):
        _read(tmp_path / "missing.pt", "benchmark", 0.0, "small_cnn")


def _config(tmp_path, **entry):
    config = read_config_file(REPO / ".test/config.yaml")
    config["external"] = {"published": {"path": str(tmp_path / "published.pt"), "layout": "benchmark", "dataset": "digits", "arch": "resnet18",
                                        "sparsity": 0.0, **entry}}
    return config


def test_external_entries_are_checked_before_any_job(tmp_path):
    config = validate(_config(tmp_path))
    assert config["external"]["published"]["model"] == {} and config["external"]["published"]["sparsity_tolerance"] == 0.01
    with pytest.raises(ConfigError, match=f"'external.published.path': {tmp_path}/published.pt not found: put the benchmark checkpoint"):
        check_external_checkpoints(config)
    for entry, message in (({"dataset": "cifar10"}, "'external.published.dataset': 'cifar10' is not a dataset of the run (digits)"),
                           ({"layout": "timm"}, "'external.published.layout': 'timm' is not one of: benchmark, hydra"),
                           ({"sparsity": 1.0}, "'external.published.sparsity': 1.0 is greater than or equal to the maximum of 1")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            validate(_config(tmp_path, **entry))
    clash = _config(tmp_path)
    clash["external"]["lwm"] = clash["external"].pop("published")
    with pytest.raises(ConfigError, match="'external.lwm': 'lwm' is also a key of prune.methods"):
        validate(clash)


def test_an_external_checkpoint_is_a_row_of_the_grid_and_a_missing_one_stops_snakemake(tmp_path):
    config = _config(tmp_path, model={"width": 2}, method="lwm", source="https://example.org/published")
    config["export"] = {"enabled": True}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))

    def dry_run():
        return subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "--snakefile", str(REPO / "Snakefile"), "--configfile", "c.yaml"],
                              cwd=tmp_path, capture_output=True, text=True, env=env_with_repo())

    run = dry_run()
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode != 0 and len(lines) == 1 and "'external.published.path'" in lines[0] and "not found" in lines[0]
    model = _model()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "published.pt")
    run = dry_run()
    jobs = planned(run)
    # one import and one evaluation for it beside the grid's (dense + 3 methods x 2 sparsities), one export
    assert jobs["import_external"] == 1 and jobs["evaluate"] == 1 + 3 * 2 + 1 and jobs["export"] == 1, jobs
    assert "results/eval/digits/resnet18/seed0/published/s0.json" in run.stdout
