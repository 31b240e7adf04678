"""benchmarks/parity.py keeps working, its check decides what it says, and the official-loop port agrees with our
pieces where they must agree (schedule, scaled-init masks, the masked network's function)."""

import importlib.util
import json
import math
import subprocess

import numpy as np
import pytest
import torch
from conftest import PYTHON, REPO, env_with_repo, small_model

from advprune.models.weights import prunable_weights
from advprune.pruning import masks_from_scores
from advprune.training import TrainSettings
from advprune.training.trainer import learning_rate_factor


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parity = _load("parity")
port = _load("hydra_port")


def test_quick_run_prints_the_side_by_side_table(tmp_path):
    run = subprocess.run([PYTHON, str(REPO / "benchmarks/parity.py"), "--quick", "--work", str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO, env=env_with_repo(), timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    rows = [line.split()[:2] for line in run.stdout.splitlines() if line.startswith(("hydra@", "lwm@"))]
    assert rows == [["hydra@0.99", "port"], ["hydra@0.99", "ours"], ["lwm@0.9", "port"], ["lwm@0.9", "ours"]]
    assert run.stdout.count("masks agree on") == 4 and "quick: checks not judged" in run.stdout
    saved = json.loads((tmp_path / "parity.json").read_text())
    assert saved["metric"] == "pgd_acc" and [len(saved["results"][c]["ours"]) for c in ("hydra", "lwm")] == [2, 2]
    assert (tmp_path / "port/hydra/seed1/model.pt").exists() and (tmp_path / "ours/lwm/seed0/model.pt").exists()


def _rows(accs, n=200, seed=0):
    rng = np.random.default_rng(seed)
    return [{"autoattack_acc": a, "bits": rng.permutation(np.arange(n) < round(a * n))} for a in accs]


def test_the_check_is_ours_mean_inside_the_port_interval():
    port_rows = _rows([0.60, 0.64])
    lines, ok = parity.judge({"hydra": {"ours": _rows([0.61, 0.63], seed=1), "port": port_rows}}, "autoattack_acc")
    assert ok and "inside" in lines[2]
    lines, ok = parity.judge({"hydra": {"ours": _rows([0.40, 0.42], seed=1), "port": port_rows}}, "autoattack_acc")
    assert not ok and "OUTSIDE" in lines[2] and lines[1].split()[:2] == ["hydra@0.99", "port"]


def test_port_schedule_is_the_loop_s_hydra_cosine():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    settings = TrainSettings(epochs=7, batch_size=1, lr=0.1, schedule="hydra_cosine")
    assert [port.cosine_lr(optimizer, 0.1, 7, e) for e in range(7)] == pytest.approx([0.1 * learning_rate_factor(settings, e) for e in range(7)])
    assert learning_rate_factor(settings, 1) == 1  # the second epoch runs at the full rate
    assert learning_rate_factor(TrainSettings(epochs=1, batch_size=1, lr=1, schedule="hydra_cosine"), 0) == 0  # one epoch: cos(-pi)


def test_port_scaled_init_is_layerwise_lwm_and_computes_the_masked_network():
    model = small_model()
    for sparsity in (0.5, 0.9):
        subnet = port.to_subnet(model, 1 - sparsity)
        port.initialize_scaled_score(subnet)
        ours = masks_from_scores({n: w.detach().abs() for n, w in prunable_weights(model).items()}, sparsity)
        theirs = port.masks(subnet)
        for name, mask in ours.items():  # the same ranking; the official count rounds down, ours to the nearest
            pruned = int((1 - (1 - sparsity)) * mask.numel())
            assert int((~theirs[name]).sum()) == pruned
            assert not (mask & ~theirs[name]).any() and int((theirs[name] & ~mask).sum()) == round(sparsity * mask.numel()) - pruned
        plain = port.subnet_to_dense(subnet, small_model()).eval()
        x = torch.rand(5, 1, 8, 8)
        assert torch.allclose(subnet.eval()(x), plain(x), atol=1e-6)
        assert math.isclose(sum(int((p == 0).sum()) for n, p in plain.named_parameters() if n in ours) / sum(m.numel() for m in ours.values()),
                            sum(int((~m).sum()) for m in theirs.values()) / sum(m.numel() for m in theirs.values()), abs_tol=1e-9)


def test_port_prune_mode_trains_scores_and_batchnorm_only():
    subnet = port.to_subnet(small_model(), 0.1)
    port.prepare_model(subnet, "prune")
    trainable = {n for n, p in subnet.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dict(subnet.named_parameters()) if n.endswith("popup_scores") or n.split(".")[0] in {"1", "4", "8"}}
    port.prepare_model(subnet, "finetune")
    trainable = {n for n, p in subnet.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dict(subnet.named_parameters()) if not n.endswith("popup_scores")}
