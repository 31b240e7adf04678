"""End to end: the test config through the real Snakemake DAG, then what users rely on afterwards —
nothing to do on a second run, and a config or library change re-runs only the jobs it affects."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from advprune.checkpoint import load_torch
from advprune.report import FIGURES

from conftest import REPO, SNAKEMAKE, copy_repo, env_with_repo, planned

pytestmark = pytest.mark.slow


def snakemake(repo: Path, *args, config="config.yaml", check=True):
    env = env_with_repo()
    env["PYTHONPATH"] = str(repo)  # the copy's advprune, not the installed one
    run = subprocess.run([SNAKEMAKE, "--cores", "2", "--configfile", config, *args], cwd=repo, capture_output=True, text=True, env=env)
    if check and run.returncode != 0:
        raise AssertionError(run.stdout[-3000:] + run.stderr[-5000:])
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("advprune"))
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
    assert len(records) == 1 + 10 * 2  # dense + 10 methods x 2 sparsities
    assert {r["method"] for r in records if r["structured"]} == {"l1_filter", "mrpf", "harp_channel"}
    for r in records:
        assert 0 <= r["autoattack_acc"] <= r["pgd_acc"] <= r["clean_acc"] <= 1, r
        assert r["n_examples"] == 48
        assert list(r["autoattack_breakdown"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
        assert r["flops_effective"] <= r["flops_dense"] and r["params_nonzero"] <= r["params_total"]
        assert r["latency_ms"] > 0 and r["latency_dense_ms"] > 0
        if not r["structured"]:
            assert abs(r["sparsity_measured"] - r["sparsity_target"]) <= 0.01
        elif r["method"] != "harp_channel":  # a parameter budget, met to within a channel of an 8-channel network
            assert abs(r["sparsity_measured"] - r["sparsity_target"]) <= 0.03
            assert r["params_total"] < r["dense_params_total"]  # physically smaller
        prov = r["provenance"]
        assert {"git_sha", "git_dirty", "config_hash", "packages", "seed", "device", "code_hash"} <= set(prov)
        assert prov["packages"]["torch"].startswith("2.14.1") and prov["seed"] == 0 and prov["device"] == "cpu"
    dense = [r for r in records if r["method"] == "dense"]
    assert all(r["clean_acc"] > 0.5 for r in dense)  # the pretrained models learned something


def test_every_record_has_hofmn_distances_that_stay_within_autoattacks_slack(run_dir):
    """HO-FMN on the points AutoAttack attacked (the test config's small budget): FMN breaks no more points that
    AutoAttack could not than tests/test_fmn.py's documented slack allows; distances.csv keeps them for the curves."""
    from advprune.security.curves import parse_distances
    from advprune.stats import from_bits
    from test_fmn import SLACK_BELOW

    records = _records(run_dir)
    for r in records:
        distances = parse_distances(r["hofmn_distances"])
        assert len(distances) == r["n_examples"] and r["hofmn"]["tuning_split"] == "val"
        assert r["hofmn_acc"] == pytest.approx((distances > r["threat_model"]["eps"]).mean()) and r["hofmn_acc"] <= r["clean_acc"]
        aa, fmn = from_bits(r["per_point"]["autoattack"]), from_bits(r["per_point"]["hofmn"])
        assert (aa & ~fmn).mean() <= max(SLACK_BELOW, 1 / r["n_examples"]), r["method"]
    table = pd.read_csv(run_dir / "results/tables/distances.csv")
    assert len(table[table["table"] == "summary"]) == len(records)


def test_pruned_weights_are_still_zero_after_fine_tuning(run_dir):
    checkpoints = sorted((run_dir / "results/finetune").rglob("model.pt"))
    assert len(checkpoints) == 20
    for path in checkpoints:
        ckpt, pruned = load_torch(path), load_torch(str(path).replace("finetune", "prune"))
        for name, mask in (ckpt["masks"] or {}).items():
            weight = ckpt["state_dict"][name]
            assert (weight[~mask] == 0).all(), f"{path}: {name} has regrown pruned weights"
            # PwoA retrains inside its prune job (its entry sets `finetune: none`)
            assert torch.equal(weight, pruned["state_dict"][name]) == ("/pwoa/" in str(path)), f"{path}: fine-tuning ran or did not"


def test_report_and_tables_are_written(run_dir):
    figures = run_dir / "results/report/figures"
    for name in FIGURES:
        for ext in ("png", "pdf"):
            assert (figures / f"{name}.{ext}").stat().st_size > 1000
    for ext in ("csv", "md", "tex"):
        assert (run_dir / f"results/report/tables/robustness.{ext}").stat().st_size > 100
    summary = (run_dir / "results/tables/summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 21
    study = pd.read_csv(run_dir / "results/tables/study_finetune.csv")
    assert sorted(zip(study.method, study.finetune_mode)) == sorted((m, f) for m in ("lwm", "l1_filter") for f in ("none", "natural", "adversarial"))
    objectives = pd.read_csv(run_dir / "results/tables/study_objectives.csv")
    assert sorted(zip(objectives.method, objectives.pretrain_objective, objectives.finetune_objective.fillna(""))) == [
        ("dense", "natural", ""), ("dense", "pgd_at", ""), ("lwm", "natural", "natural"), ("lwm", "natural", "pgd_at"), ("lwm", "pgd_at", "pgd_at")]
    curves = pd.read_csv(run_dir / "results/tables/prune_curves.csv")
    assert {"hydra", "harp", "pwoa", "lwm"} <= set(curves.impl) and {"admm", "retrain"} <= set(curves.phase)
    for stage in ("fetch_data", "pretrain", "evaluate", "report"):  # every rule logs and benchmarks
        assert list((run_dir / "logs" / stage).rglob("*.log")) or (run_dir / f"logs/{stage}.log").exists()
        assert list((run_dir / "results/benchmarks").rglob(f"{stage}*")) or list((run_dir / f"results/benchmarks/{stage}").rglob("*.tsv"))


def test_a_complete_run_has_nothing_left_to_do(run_dir):
    assert planned(snakemake(run_dir, "-n")) == {}


TAIL = {"aggregate": 1, "report": 1, "all": 1}
STUDY_EVALS = {"study_finetune_evaluate": 4, "study_objectives_evaluate": 2, "study_objectives_evaluate_dense": 1}
EVERYTHING_AFTER_FETCH = {
    "pretrain": 1, "study_objectives_pretrain": 1, "sensitivity": 1, "prune": 20, "study_objectives_prune": 1, "finetune": 20, "study_finetune": 4,
    "study_objectives_finetune": 2, "evaluate": 21, **STUDY_EVALS, **TAIL,
}


def _with_config(repo, tmp_name, edit):
    config = yaml.safe_load((repo / "config.yaml").read_text())
    edit(config)
    (repo / tmp_name).write_text(yaml.safe_dump(config))
    return tmp_name


@pytest.mark.parametrize(
    "edit,expected",
    [
        # every evaluation; the studies' records shared with the main grid are its own (no second AutoAttack run)
        (lambda c: c["evaluate"]["pgd"].update(steps=11), {"evaluate": 21, **STUDY_EVALS, **TAIL}),
        (lambda c: c["report"].update(dpi=81), {"report": 1, "all": 1}),
        (lambda c: c["evaluate"]["autoattack"].update(state_every=60), {}),  # how often AutoAttack saves its state changes no result
        (lambda c: c["finetune"].update(lr=0.02), {"finetune": 20, "study_finetune": 4, "study_objectives_finetune": 2, "evaluate": 20,
                                                   "study_finetune_evaluate": 4, "study_objectives_evaluate": 2, **TAIL}),
        (lambda c: c["prune"]["methods"]["random"].update(method="random"), {}),  # same settings, spelled out
        (lambda c: c["prune"].update(sparsities=[0.5, 0.9, 0.95]), {"prune": 10, "finetune": 10, "evaluate": 10, **TAIL}),
        (lambda c: c["prune"]["methods"]["hydra"].update(epochs=2), {"prune": 2, "finetune": 2, "evaluate": 2, **TAIL}),
        (lambda c: c["pretrain"].update(epochs=5), EVERYTHING_AFTER_FETCH),
    ],
    ids=["eval-setting", "plot-setting", "aa-state-interval", "finetune-setting", "no-op", "new-sparsity", "one-method", "pretrain-setting"],
)
def test_a_config_change_reruns_only_what_it_affects(run_dir, edit, expected):
    name = _with_config(run_dir, "changed.yaml", edit)
    assert planned(snakemake(run_dir, "-n", config=name)) == expected


@pytest.mark.parametrize(
    "module,expected",
    [
        ("advprune/report/figures.py", {"report": 1, "all": 1}),
        ("advprune/attacks/autoattack.py", {"evaluate": 21, **STUDY_EVALS, **TAIL}),
        # lwm, lwm_global, lwm_iter; the studies' lwm jobs
        ("advprune/pruning/lwm.py", {"prune": 6, "study_objectives_prune": 1, "finetune": 6, "study_finetune": 2, "study_objectives_finetune": 2,
                                     "evaluate": 6, "study_finetune_evaluate": 2, "study_objectives_evaluate": 2, **TAIL}),
        # the structured methods only: l1_filter, mrpf, harp (both granularities share the module)
        ("advprune/pruning/_structured.py", {"prune": 8, "finetune": 8, "study_finetune": 2, "evaluate": 8, "study_finetune_evaluate": 2, **TAIL}),
        ("advprune/training/losses.py", EVERYTHING_AFTER_FETCH),
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
