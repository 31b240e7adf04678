"""Exports to the Adversarial Pruning benchmark and RobustBench (advprune/interop): every exported checkpoint
loads with strict=True into the benchmark's base models and computes what our model computes, and an export
evaluated as an external checkpoint gives the record the original gets.

The base models are written here from pralab/AdversarialPruningBenchmark at advprune.interop.benchmark.COMMIT
(models/base_resnet18.py: kuangliu's ResNet-18; models/base_vgg16.py: HYDRA's vgg16_bn, cfg "16", bias-free
convs, AdaptiveAvgPool2d(2, 2), classifier 2048-256-256-10), with the width, input channels and classes as
parameters so that the digits-sized exports of the round trip load into them too (the benchmark's own take
3x32x32 inputs only: its ResNet ends in avg_pool2d(4), its VGG has four 2x2 max pools)."""

import json
import os
import pickle
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import REPO, load_script

from advprune.checkpoint import load_model, load_torch, save_model
from advprune.config import evaluate_params, export_params, prune_params, read_config_file, validate
from advprune.data import load_meta, load_split
from advprune.identity import expected_identity
from advprune.interop import benchmark
from advprune.interop.export import export_run
from advprune.models import build_model
from advprune.models.weights import prunable_weights
from advprune.pruning import PruneContext, build_method
from advprune.training import apply_masks


class BaseBlock(nn.Module):
    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class BaseResNet18(nn.Module):
    def __init__(self, width=64, in_channels=3, n_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**i
            setattr(self, f"layer{i + 1}", nn.Sequential(BaseBlock(planes // stride, planes, stride), BaseBlock(planes, planes, 1)))
        self.linear = nn.Linear(8 * width, n_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


class BaseVGG16(nn.Module):
    def __init__(self, width=64, in_channels=3, n_classes=10):
        super().__init__()
        layers, channels = [], in_channels
        for item in [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, item * width, 3, padding=1, bias=False), nn.BatchNorm2d(item * width), nn.ReLU(inplace=True)]
                channels = item * width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(channels * 4, 4 * width), nn.ReLU(True), nn.Linear(4 * width, 4 * width), nn.ReLU(True),
                                        nn.Linear(4 * width, n_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


BASE = {"resnet18": BaseResNet18, "vgg16_bn": BaseVGG16}


def test_the_base_models_here_are_the_benchmarks():
    # kuangliu's CIFAR-10 ResNet-18; HYDRA's VGG-16-bn: 14,710,464 conv + 8,448 BatchNorm + 592,906 linear weights
    assert sum(p.numel() for p in BaseResNet18().parameters()) == 11_173_962
    assert sum(p.numel() for p in BaseVGG16().parameters()) == 15_311_818
    assert [k for k in BaseVGG16().state_dict() if k.endswith(".weight")][-4:] == ["features.41.weight", "classifier.0.weight", "classifier.2.weight",
                                                                                  "classifier.4.weight"]


def _random_statistics(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet18", "vgg16_bn"])
def test_exports_load_strictly_into_the_base_models_and_compute_the_same(tmp_path, arch):
    meta = {"n_classes": 10, "channels": 3, "image_size": [32, 32]}
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    # unstructured at the benchmark's own sizes: 90 % of every layer's weights masked (magnitude), masks folded
    model = _random_statistics(build_model(arch, 10, 3, (32, 32), width=64))
    masks = {name: w.abs() > w.abs().flatten().kthvalue(int(0.9 * w.numel())).values for name, w in prunable_weights(model, True).items()}
    apply_masks(model, masks)  # as the pipeline's checkpoints hold them: zeros where the masks are
    save_model(tmp_path / "us.pt", model, arch, {"width": 64}, meta, masks=masks)
    # structured: a physically smaller network (L1 filters, half the weights), exported at the dense shapes
    narrow = _random_statistics(build_model(arch, 10, 3, (32, 32), width=8))
    small = build_method("l1_filter").prune(narrow, 0.5, PruneContext(train=SimpleNamespace(x=x), include_first_last=True)).model.eval()
    save_model(tmp_path / "s.pt", small, arch, {"width": 8}, meta)
    for name, width in (("us", 64), ("s", 8)):
        ours, ckpt = load_model(tmp_path / f"{name}.pt")
        torch.save(benchmark.checkpoint(ours, ckpt), tmp_path / f"{name}.benchmark.pt")
        base = BASE[arch](width)
        base.load_state_dict(load_torch(tmp_path / f"{name}.benchmark.pt")["state_dict"], strict=True)
        with torch.no_grad():
            assert torch.allclose(base.eval()(x), ours.eval()(x), rtol=1e-4, atol=1e-5), name  # (torch.testing imports seconds of torch.distributed)
        zeros = sum(int((w == 0).sum()) for k, w in base.state_dict().items() if k.endswith("weight") and w.dim() > 1)
        assert zeros >= 0.45 * sum(w.numel() for k, w in base.state_dict().items() if k.endswith("weight") and w.dim() > 1), name



def _trained_resnet(digits_dir, tmp_path):
    """A ResNet-18 (width 4) trained naturally for a few epochs on digits, saved as a dense checkpoint of ours."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 1, (8, 8), width=4)
    train = load_split(digits_dir, "train")
    for _ in range(4):  # plain gradient steps: torch.optim's first use imports torch._dynamo (seconds)
        for i in range(0, len(train.y), 64):
            model.zero_grad()
            F.cross_entropy(model(train.float_x()[i:i + 64]), train.y[i:i + 64]).backward()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
    save_model(tmp_path / "dense.pt", model.eval(), "resnet18", {"width": 4}, load_meta(digits_dir))
    return tmp_path / "dense.pt"


def _config():
    """The round trip's run: ResNet-18 (width 4) on digits, LWM and L1 filters at 50 %, 24 test points. AutoAttack
    runs every part on its rehearsal budget (3 iterations, 20 Square queries): the same code paths, and what is
    compared is two evaluations of the same weights, not the attack's strength."""
    config = read_config_file(REPO / ".test/config.yaml")
    config.update(archs=["resnet18"], models={"resnet18": {"width": 4}}, threat_model={"norm": "Linf", "eps": 0.03})
    config["prune"].update(sparsities=[0.5], methods={"lwm": {"scope": "layer"}, "l1_filter": {}})
    config["evaluate"].update(n_examples=24, pgd={"steps": 5, "restarts": 1, "step_size": 0.01}, autoattack={"version": "rehearsal"}, verify=None,
                              latency=None)
    return validate(config)


def test_an_export_evaluated_as_an_external_checkpoint_gives_the_same_record(digits_dir, tmp_path):
    config = _config()
    dense = _trained_resnet(digits_dir, tmp_path)
    items = []
    for method in config["prune"]["methods"]:
        ids = {"dataset": "digits", "arch": "resnet18", "seed": 0, "method": method, "sparsity": "0.5"}
        pruned, record = tmp_path / f"{method}.pt", tmp_path / f"{method}.json"
        load_script("prune").main(str(dense), digits_dir, 0.5, 0, prune_params(config, method, dataset="digits"), str(pruned),
                              str(tmp_path / f"{method}.info"))
        load_script("evaluate").main(str(pruned), digits_dir, "digits", "resnet18", 0, method, 0.5, evaluate_params(config), str(record),
                                 labels={"impl": method}, expect=expected_identity(config, "resnet18", method, 0.5))
        items.append({**ids, "record": str(record), "model": str(pruned)})
    rows = export_run(items, tmp_path / "export", export_params(config))

    for row, item in zip(rows, items):
        exported = f"{row['dir']}/benchmark.pt"
        BaseResNet18(4, 1).load_state_dict(load_torch(exported)["state_dict"], strict=True)  # the benchmark's names and shapes
        params = {"layout": "benchmark", "arch": "resnet18", "model": {"width": 4}, "sparsity": json.load(open(item["record"]))["sparsity_measured"],
                  "sparsity_tolerance": 1e-9, "harp_alpha": 0.1, "source": "advprune export", "include_first_last": True}
        load_script("import_external").main(str(exported), digits_dir, params, str(tmp_path / "imported.pt"), name="reimported")
        # evaluated as the external row `reimported` of a run: the identity check takes its options from the external section
        external = {**config, "external": {"reimported": {"model": {"width": 4}}}}
        load_script("evaluate").main(str(tmp_path / "imported.pt"), digits_dir, "digits", "resnet18", 0, "reimported", 0.5, evaluate_params(config),
                                 str(tmp_path / "again.json"), expect=expected_identity(external, "resnet18", "reimported", params["sparsity"]))
        original, again = json.load(open(item["record"])), json.load(open(tmp_path / "again.json"))
        for key in ("clean_acc", "pgd_acc", "autoattack_acc", "autoattack_breakdown", "per_point", "points_sha256", "sparsity_measured", "structured",
                    "params_total", "flops_effective"):
            assert again[key] == original[key], (item["method"], key)
        assert again["external"]["layout"] == "benchmark" and again["external"]["path"] == str(exported) and original["external"] is None
        assert original["structured"] == (item["method"] == "l1_filter") and 0.1 < original["clean_acc"] and original["pgd_acc"] > 0

    # what a submission needs, filled from the records
    lwm = json.load(open(tmp_path / "export/digits/resnet18/seed0/lwm/s0.5/benchmark.json"))
    assert lwm["model_key"] == "Sehwag19_Sehwag2019Towards_R18_DIGITS_US_50" and lwm["base_model"] == "base_resnet18" and lwm["refused"] is None
    assert lwm["taxonomy"]["A: Pretraining "] == "Adversarial Training (AT) PGD" and lwm["taxonomy"]["Pruning structure"] == "Unstructured (US)"
    assert lwm["results"]["clean_acc"] == round(100 * json.load(open(items[0]["record"]))["clean_acc"], 2)
    assert lwm["results"]["normalization"] is False
    assert any("width 4" in i for i in lwm["checkpoint_issues"]) and any("sparsity 50 % (US levels: 90/95/99 %)" in i for i in lwm["checkpoint_issues"])
    assert any("eps 0.03" in i for i in lwm["protocol_issues"])
    assert any("AutoAttack version rehearsal" in i for i in lwm["protocol_issues"])
    info = json.load(open(tmp_path / "export/digits/resnet18/seed0/l1_filter/s0.5/model_info.json"))
    assert list(info) == ["link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue", "architecture", "eps",
                          "clean_acc", "reported", "footnote", "autoattack_acc", "unreliable"]
    assert info["name"] == "Pruning Filters for Efficient ConvNets" and info["architecture"] == "ResNet-18 (width 4)"
    index = json.load(open(tmp_path / "export/index.json"))
    assert [m["model_key"] for m in index["models"]] == ["Sehwag19_Sehwag2019Towards_R18_DIGITS_US_50", "L1Filter_Li2017Pruning_R18_DIGITS_S_50"]
    assert len(json.load(open(tmp_path / "export/taxonomy.json"))) == 2
    assert "## L1Filter_Li2017Pruning" in (tmp_path / "export/SUBMISSION.md").read_text()


def test_distances_and_the_benchmarks_hofmn_accuracy_are_exported(tmp_path):
    record = {"hofmn_distances": [0.0, 0.01, 0.05, None], "clean_acc": 0.75, "autoattack_acc": 0.5}
    assert benchmark.submission_fields(record)["hofmn_acc"] == 50.0  # above 8/255: 0.05 and "none found"
    assert benchmark.hofmn_accuracy(None) is None
    from advprune.interop.export import _write_pickle

    _write_pickle([float("inf") if d is None else d for d in record["hofmn_distances"]], tmp_path / "d.pickle")
    with open(tmp_path / "d.pickle", "rb") as fh:  # the benchmark's plot_sec_curve: torch.tensor(distances) > eps
        assert (torch.tensor(pickle.load(fh)) > 8 / 255).tolist() == [False, False, True, True]


def test_an_architecture_without_a_base_model_is_refused_in_one_line(tmp_path, capsys, monkeypatch, digits_dir):
    config = read_config_file(REPO / ".test/config.yaml")
    config["prune"].update(sparsities=[0.9], methods={"lwm": {}})
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=8)
    run = tmp_path / "results"
    save_model(run / "finetune/digits/small_cnn/seed0/lwm/s0.9/model.pt", model, "small_cnn", {"width": 8}, load_meta(digits_dir))
    record = {"dataset": "digits", "arch": "small_cnn", "seed": 0, "method": "lwm", "impl": "lwm", "sparsity_target": 0.9,
              "threat_model": {"norm": "Linf", "eps": 0.1}, "split": "test", "n_examples": 359, "clean_acc": 0.9, "autoattack_acc": 0.5,
              "autoattack_version": "standard",
              "taxonomy": {"structure": "US", "locality": "L", "criterion": "LWM", "ranking": "weight_l1", "allocation": "uniform", "schedule": "1S"}}
    os.makedirs(run / "eval/digits/small_cnn/seed0/lwm")
    (run / "eval/digits/small_cnn/seed0/lwm/s0.9.json").write_text(json.dumps(record))
    (tmp_path / "Snakefile").write_text("")
    monkeypatch.chdir(tmp_path)
    from advprune.versioning import main

    main(["export", "--", "--configfile", "c.yaml"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("advprune export: results/export/digits/small_cnn/seed0/lwm/s0.9: no benchmark checkpoint: "
                      "small_cnn has no counterpart among the field's base models (they are resnet18, vgg16_bn)")
    assert not (tmp_path / "results/export/digits/small_cnn/seed0/lwm/s0.9/benchmark.pt").exists()
    assert json.load(open(tmp_path / "results/export/digits/small_cnn/seed0/lwm/s0.9/model_info.json"))["architecture"] == "small CNN (width 8)"
    os.remove(run / "eval/digits/small_cnn/seed0/lwm/s0.9.json")
    with pytest.raises(SystemExit, match="the run is not complete: results/eval/digits/small_cnn/seed0/lwm/s0.9.json is missing"):
        main(["export", "--", "--configfile", "c.yaml"])
