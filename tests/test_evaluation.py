import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import torch
import torch.nn as nn

from advprune.attacks import PGD
from advprune.checkpoint import load_model, load_torch, save_model, save_torch
from advprune.config import evaluate_params, validate
from advprune.data import load_meta, load_split
from advprune.evaluation import count_flops, model_statistics
from advprune.models import build_model
from advprune.provenance import provenance
from advprune.sensitivity import module_sensitivity

from conftest import PYTHON, REPO, env_with_repo, load_script


def test_flops_count_conv_and_linear_macs_and_skip_zero_weights():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    dense, effective = count_flops(model, (1, 8, 8))
    assert dense == 8 * 8 * 4 * 9 + 256 * 10
    with torch.no_grad():
        model[0].weight[:2] = 0  # half the filters
    assert count_flops(model, (1, 8, 8)) == (dense, 8 * 8 * 2 * 9 + 256 * 10)


def test_model_statistics_measure_sparsity_from_the_weights():
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.view(-1)[: m.weight.numel() // 2] = 0
    stats = model_statistics(model, (1, 8, 8))
    assert abs(stats["sparsity_measured"] - 0.5) < 0.01
    assert stats["params_nonzero"] < stats["params_total"]
    assert [row["layer_index"] for row in stats["layers"]] == list(range(len(stats["layers"])))


def test_sensitivity_is_an_increase_of_the_loss_that_grows_with_the_radius():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4).eval()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    attack = PGD(0.1, 0.05, 2)
    small = module_sensitivity(model, x, y, attack, rho=0.01, steps=3)
    large = module_sensitivity(model, x, y, attack, rho=0.5, steps=3)
    assert [r["module"] for r in small] == ["0", "3", "7", "12", "14"]
    assert all(r["sensitivity"] >= 0 and r["perturbed_loss"] >= r["base_loss"] for r in small)
    assert sum(r["sensitivity"] for r in large) > sum(r["sensitivity"] for r in small)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights untouched
    assert all(p.requires_grad for p in model.parameters())


class Payload:  # an arbitrary object needs unpickling code to load: weights_only refuses it
    pass


def test_checkpoints_round_trip_and_load_without_pickled_code(tmp_path):
    model = build_model("resnet18", 10, 1, (8, 8), width=4)
    meta = {"n_classes": 10, "channels": 1, "image_size": [8, 8]}
    masks = {"conv1.weight": torch.ones_like(model.conv1.weight, dtype=torch.bool)}
    save_model(tmp_path / "m.pt", model, "resnet18", {"width": 4}, meta, masks=masks, meta={"note": "x"})
    loaded, ckpt = load_model(tmp_path / "m.pt")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert ckpt["masks"]["conv1.weight"].dtype == torch.bool and ckpt["meta"] == {"note": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # no temporary file left behind

    torch.save({"evil": Payload()}, tmp_path / "evil.pt")
    try:
        load_torch(tmp_path / "evil.pt")
    except Exception as error:  # noqa: BLE001
        assert "weights_only" in str(error) or "Unsupported global" in str(error)
    else:
        raise AssertionError("a pickled object was loaded")


def test_an_interrupted_write_keeps_the_previous_checkpoint(tmp_path):
    save_torch({"v": torch.ones(3)}, tmp_path / "c.pt")

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("killed mid-write")

    try:
        save_torch({"v": Unsaveable()}, tmp_path / "c.pt")
    except RuntimeError:
        pass
    assert torch.equal(load_torch(tmp_path / "c.pt")["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_provenance_names_code_config_packages_seed_and_device():
    record = provenance({"lr": 0.1}, 3, torch.device("cpu"), code_hash="abc")
    assert len(record["git_sha"]) == 40 and isinstance(record["git_dirty"], bool)
    assert record["config_hash"] == provenance({"lr": 0.1}, 3, torch.device("cpu"))["config_hash"] != provenance({"lr": 0.2}, 3, torch.device("cpu"))["config_hash"]
    assert record["packages"]["torch"].startswith("2.14.1") and record["seed"] == 3 and record["device"] == "cpu" and record["code_hash"] == "abc"
    json.dumps(record)


def test_robustness_records_per_point_results_that_give_its_accuracies(digits_dir):
    from advprune.evaluation import robustness
    from advprune.stats import from_bits

    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    pgd, aa = {"steps": 3, "restarts": 1, "step_size": 0.03}, {"version": "standard", "seed": 0}
    test = load_split(digits_dir, "test", n=24)
    scores = robustness(model, test, 10, 0.05, "Linf", pgd, aa, 64)
    json.dumps(scores)  # the record is JSON
    bits = {metric: from_bits(s) for metric, s in scores["per_point"].items()}
    assert set(bits) == {"clean", "pgd", "autoattack"} and all(len(b) == 24 for b in bits.values())
    for metric, b in bits.items():
        assert b.mean() == pytest.approx(scores[f"{metric}_acc"]), metric
    # In the split's order: the clean results are the model's predictions point by point.
    with torch.no_grad():
        assert (torch.from_numpy(bits["clean"]) == (model.eval()(test.float_x()).argmax(1) == test.y)).all()
    assert not (bits["autoattack"] & ~bits["clean"]).any()  # a misclassified point is never robust
    # Other points give another hash.
    other = load_split(digits_dir, "val", n=8)
    assert robustness(model, other, 10, 0.05, "Linf", pgd, aa, 64)["points_sha256"] != scores["points_sha256"]


def test_a_killed_evaluation_continues_autoattack_to_the_record_of_an_uninterrupted_one(digits_dir, tmp_path):
    """SIGKILL during AutoAttack (its state saved at every point it can continue from), then the same job again:
    the record's per-point results are an uninterrupted run's, and the state is gone once the record is written."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=8)
    train = load_split(digits_dir, "train")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(1):  # a natural model that keeps some points through APGD-CE's first batch at eps 0.03
        for xb, yb in train.batches(64, shuffle=True, generator=torch.Generator().manual_seed(0)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    save_model(tmp_path / "m.pt", model, "small_cnn", {"width": 8}, load_meta(digits_dir))
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["data"]["root"] = str(Path(digits_dir).parent)
    config["threat_model"]["eps"] = 0.03
    config["models"]["small_cnn"] = {"width": 8}
    config["evaluate"].update(n_examples=48, batch_size=8, verify=None, latency=None, pgd={"steps": 2, "restarts": 1, "step_size": 0.02},
                              autoattack={"version": "rehearsal", "seed": 0, "state_every": 0})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    validate(config)

    script = load_script("evaluate")
    script.main(str(tmp_path / "m.pt"), digits_dir, "digits", "small_cnn", 0, "dense", 0, evaluate_params(config), str(tmp_path / "straight.json"))

    state = tmp_path / "resume" / "e.json.state.pt"
    cmd = [PYTHON, str(REPO / "scripts/evaluate.py"), "--config", str(tmp_path / "config.yaml"), "--dataset", "digits", "--arch", "small_cnn",
           "--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "e.json"), "--resume", str(state)]
    proc = subprocess.Popen(cmd, env=env_with_repo(), cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not state.exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "e.json").exists()
    killed = load_torch(state)
    assert killed["part"] < 4, "AutoAttack finished before the kill"

    # the same job again (in this process: one torch import fewer)
    script.main(str(tmp_path / "m.pt"), digits_dir, "digits", "small_cnn", 0, "dense", 0, evaluate_params(config), str(tmp_path / "e.json"),
                log=str(tmp_path / "e.log"), resume={"path": str(state), "every": 0})
    assert f"AutoAttack: resumed from {state}" in (tmp_path / "e.log").read_text()
    straight, record = (json.loads((tmp_path / name).read_text()) for name in ("straight.json", "e.json"))
    assert record["per_point"] == straight["per_point"] and record["autoattack_breakdown"] == straight["autoattack_breakdown"]
    broken_at_kill = int((killed["clean_correct"] & ~killed["robust"]).sum())
    broken = straight["per_point"]["autoattack"].count("0") - straight["per_point"]["clean"].count("0")
    assert broken_at_kill < broken, "nothing broken after the kill: the comparison would be vacuous"
    assert straight["autoattack_acc"] > 0, "everything broken: the comparison would be vacuous"
    assert not state.exists()
