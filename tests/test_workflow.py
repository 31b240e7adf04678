"""End to end: the test config through the real Snakemake DAG, then what users rely on afterwards —
nothing to do on a second run, and a config or library change re-runs only the jobs it affects."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from advprune.checkpoint import load_torch

from conftest import REPO, SNAKEMAKE, env_with_repo

pytestmark = pytest.mark.slow


def _copy_repo(dest: Path) -> Path:
    """A private copy of the repository (tracked and unignored files), so tests may edit its code."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def snakemake(repo: Path, *args, config="config.yaml", check=True):
    env = env_with_repo()
    env["PYTHONPATH"] = str(repo)  # the copy's advprune, not the installed one
    run = subprocess.run([SNAKEMAKE, "--cores", "2", "--configfile", config, *args], cwd=repo, capture_output=True, text=True, env=env)
    if check and run.returncode != 0:
        raise AssertionError(run.stdout[-3000:] + run.stderr[-5000:])
    return run


def planned(run) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table ({} when there is nothing to do)."""
    text = run.stdout + run.stderr
    if "Job stats" not in text:
        assert "Nothing to be done" in text, text[-2000:]
        return {}
    table = text.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    repo = _copy_repo(tmp_path_factory.mktemp("advprune"))
    config = yaml.safe_load((repo / ".test/config.yaml").read_text())
    overlay = yaml.safe_load((repo / ".test/methods.yaml").read_text())  # every method and the studies
    config["prune"]["methods"].update(overlay["prune"]["methods"])
    config["studies"] = overlay["studies"]
    (repo / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    snakemake(repo)
    return repo


def _records(repo):
    return [json.loads(p.read_text()) for p in sorted((repo / "results/eval").rglob("*.json"))]


def test_every_model_is_evaluated_with_consistent_accuracies(run_dir):
    records = _records(run_dir)
    assert len(records) == 1 + 3 * 2  # dense + 3 methods x 2 sparsities
    for r in records:
        assert 0 <= r["autoattack_acc"] <= r["pgd_acc"] <= r["clean_acc"] <= 1, r
        assert r["n_examples"] == 48
        assert list(r["autoattack_breakdown"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
        assert abs(r["sparsity_measured"] - r["sparsity_target"]) <= 0.01
        assert r["flops_effective"] <= r["flops_dense"] and r["params_nonzero"] <= r["params_total"]
        prov = r["provenance"]
        assert {"git_sha", "git_dirty", "config_hash", "packages", "seed", "device", "code_hash"} <= set(prov)
        assert prov["packages"]["torch"].startswith("2.14.1") and prov["seed"] == 0 and prov["device"] == "cpu"
    dense = [r for r in records if r["method"] == "dense"]
    assert all(r["clean_acc"] > 0.5 for r in dense)  # the pretrained models learned something


def test_pruned_weights_are_still_zero_after_fine_tuning(run_dir):
    checkpoints = sorted((run_dir / "results/finetune").rglob("model.pt"))
    assert len(checkpoints) == 6
    for path in checkpoints:
        ckpt = load_torch(path)
        for name, mask in ckpt["masks"].items():
            weight = ckpt["state_dict"][name]
            assert (weight[~mask] == 0).all(), f"{path}: {name} has regrown pruned weights"
            assert not torch.equal(weight, load_torch(str(path).replace("finetune", "prune"))["state_dict"][name]), "fine-tuning changed nothing"


def test_report_and_tables_are_written(run_dir):
    figures = run_dir / "results/report/figures"
    for name in ("robustness_vs_sparsity", "layer_sparsity", "sensitivity", "training_curves"):
        for ext in ("png", "pdf"):
            assert (figures / f"{name}.{ext}").stat().st_size > 1000
    for ext in ("csv", "md", "tex"):
        assert (run_dir / f"results/report/tables/robustness.{ext}").stat().st_size > 100
    summary = (run_dir / "results/tables/summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 7
    for stage in ("fetch_data", "pretrain", "evaluate", "report"):  # every rule logs and benchmarks
        assert list((run_dir / "logs" / stage).rglob("*.log")) or (run_dir / f"logs/{stage}.log").exists()
        assert list((run_dir / "results/benchmarks").rglob(f"{stage}*")) or list((run_dir / f"results/benchmarks/{stage}").rglob("*.tsv"))


def test_a_complete_run_has_nothing_left_to_do(run_dir):
    assert planned(snakemake(run_dir, "-n")) == {}


def _with_config(repo, tmp_name, edit):
    config = yaml.safe_load((repo / "config.yaml").read_text())
    edit(config)
    (repo / tmp_name).write_text(yaml.safe_dump(config))
    return tmp_name


@pytest.mark.parametrize(
    "edit,expected",
    [
        (lambda c: c["evaluate"]["pgd"].update(steps=11), {"evaluate": 7, "aggregate": 1, "report": 1, "all": 1}),
        (lambda c: c["report"].update(dpi=81), {"report": 1, "all": 1}),
        (lambda c: c["finetune"].update(lr=0.02), {"finetune": 6, "evaluate": 6, "aggregate": 1, "report": 1, "all": 1}),
        (lambda c: c["prune"]["methods"]["random"].update(method="random"), {}),  # same settings, spelled out
        (lambda c: c["prune"].update(sparsities=[0.5, 0.9, 0.95]), {"prune": 3, "finetune": 3, "evaluate": 3, "aggregate": 1, "report": 1, "all": 1}),
        (lambda c: c["pretrain"].update(epochs=5), {"pretrain": 1, "sensitivity": 1, "prune": 6, "finetune": 6, "evaluate": 7, "aggregate": 1, "report": 1, "all": 1}),
    ],
    ids=["eval-setting", "plot-setting", "finetune-setting", "no-op", "new-sparsity", "pretrain-setting"],
)
def test_a_config_change_reruns_only_what_it_affects(run_dir, edit, expected):
    name = _with_config(run_dir, "changed.yaml", edit)
    assert planned(snakemake(run_dir, "-n", config=name)) == expected


@pytest.mark.parametrize(
    "module,expected",
    [
        ("advprune/report/figures.py", {"report": 1, "all": 1}),
        ("advprune/attacks/autoattack.py", {"evaluate": 7, "aggregate": 1, "report": 1, "all": 1}),
        ("advprune/pruning/lwm.py", {"prune": 4, "finetune": 4, "evaluate": 4, "aggregate": 1, "report": 1, "all": 1}),
        ("advprune/training/losses.py", {"pretrain": 1, "sensitivity": 1, "prune": 6, "finetune": 6, "evaluate": 7, "aggregate": 1, "report": 1, "all": 1}),
    ],
)
def test_a_library_change_reruns_the_stages_that_use_it(run_dir, module, expected):
    path = run_dir / module
    original = path.read_text()
    try:
        path.write_text(original + "\n# a change\n")
        assert planned(snakemake(run_dir, "-n")) == expected
    finally:
        path.write_text(original)


def test_workflow_passes_snakemake_lint():
    run = subprocess.run([SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, env=env_with_repo())
    assert run.returncode == 0, run.stdout + run.stderr
