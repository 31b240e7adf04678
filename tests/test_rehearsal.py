"""Rehearsal of the paper configs (advprune/rehearsal.py): what the shrinking keeps, the covering of dataset x
architecture pairs, the start checkpoints in RobustBench's layout, and every config in config/paper/ run end to
end through the real Snakefile on raw files in each dataset's official format."""

import json
import re
from pathlib import Path

import pytest
import torch

from advprune import config as cfg
from advprune import rehearsal
from advprune.checkpoint import load_start_model
from advprune.data import DATASETS

from conftest import REPO

PAPER = sorted((REPO / "config/paper").glob("*.yaml"))


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_shrinking_keeps_every_dataset_arch_method_and_study(path):
    config = cfg.load_config(path)
    small = rehearsal.shrink(config)
    cfg.validate(small)  # still a valid config
    for key in ("datasets", "archs", "threat_model", "studies"):
        assert small[key] == config[key], key
    assert list(small["prune"]["methods"]) == list(config["prune"]["methods"])
    for key, spec in config["prune"]["methods"].items():
        shrunk = small["prune"]["methods"][key]
        # options that pick a code path are untouched; only counts (epochs, batches) may be smaller
        assert {k: v for k, v in shrunk.items() if not isinstance(v, (int, float)) or isinstance(v, bool)} == \
               {k: v for k, v in spec.items() if not isinstance(v, (int, float)) or isinstance(v, bool)}
        assert all(shrunk[k] <= v for k, v in spec.items() if isinstance(v, int) and not isinstance(v, bool))
    assert small["seeds"] == config["seeds"][:1] and len(small["prune"]["sparsities"]) == 1
    # AutoAttack: every part, on the rehearsal budget; the verification settings as they are
    assert small["evaluate"]["autoattack"] == {**config["evaluate"]["autoattack"], "version": "rehearsal"}
    assert small["evaluate"]["verify"] == config["evaluate"]["verify"]
    assert small["pretrain"]["objective"] == config["pretrain"]["objective"] and small["pretrain"]["epochs"] == 1
    for study in config["studies"].values():  # a study reusing main-grid jobs at full scale still does
        if study.get("sparsity") in config["prune"]["sparsities"]:
            assert small["prune"]["sparsities"] == [study["sparsity"]]


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_invocations_cover_every_dataset_and_every_arch_at_every_geometry(path):
    config = rehearsal.shrink(cfg.load_config(path))
    runs = rehearsal.invocations(config)
    pairs = {(d, a) for run in runs for d in run["datasets"] for a in run["archs"]}
    assert [d for run in runs for d in run["datasets"]] == config["datasets"]  # each dataset once
    geometry = {d: (DATASETS[d].channels, *DATASETS[d].image_size) for d in config["datasets"]}
    for arch in config["archs"]:
        assert {geometry[d] for d, a in pairs if a == arch} == set(geometry.values()), arch
    assert runs[0]["studies"] == config["studies"] and all(not run["studies"] for run in runs[1:])


def test_covering_pairs_of_the_mrpf_grid():
    runs = rehearsal.invocations(rehearsal.shrink(cfg.load_config(REPO / "config/paper/mrpf.yaml")))
    assert [(r["datasets"][0], r["archs"]) for r in runs] == [
        ("svhn", ["resnet18"]), ("cifar10", ["vgg16_bn"]), ("cifar100", ["mobilevit_xs"]), ("tinyimagenet", ["resnet18", "vgg16_bn", "mobilevit_xs"])]


def test_start_checkpoints_are_written_in_robustbench_layout_inside_the_scratch_directory(tmp_path):
    config = rehearsal.shrink(cfg.load_config(REPO / "config/paper/pwoa_cifar100.yaml"))
    config["pretrain"]["robustbench"]["root"] = "/nowhere/real/cache"  # shrink moves it into the scratch directory
    config = rehearsal.shrink(config)
    rehearsal.write_checkpoints(config, tmp_path)
    path = tmp_path / "models/cifar100/Linf/Cui2020Learnable_34_10_LBGAT6.pt"
    state = torch.load(path, weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in state) and any(".sub_block1." in f".{k[7:]}" for k in state)
    assert "module.block1.layer.0.conv1.weight" in state and "module.bn1.running_var" in state
    spec = DATASETS["cifar100"]
    meta = {"n_classes": spec.n_classes, "channels": spec.channels, "image_size": list(spec.image_size)}
    model, _ = load_start_model(path, "wrn_34_10", config["models"]["wrn_34_10"], meta)
    assert model.fc.out_features == 100


def test_clean_validates_every_config_before_deleting_anything(tmp_path, capsys):
    results = tmp_path / "results"
    (results / "eval").mkdir(parents=True)
    (results / "eval/record.json").write_text("{}")
    with pytest.raises(SystemExit) as error:  # a directory given where a config belongs
        rehearsal.main(["--clean", "--workdir", str(tmp_path), str(results)])
    assert "results" in str(error.value) and "\n" not in str(error.value)
    assert (results / "eval/record.json").exists()


def test_clean_deletes_only_what_a_rehearsal_made(tmp_path):
    config = tmp_path / "results.yaml"  # a valid config whose scratch directory would be tmp_path/results
    config.write_text((REPO / ".test/config.yaml").read_text())
    results = tmp_path / "results"
    (results / "eval").mkdir(parents=True)
    (results / "eval/record.json").write_text("{}")
    with pytest.raises(SystemExit) as error:
        rehearsal.main(["--clean", "--workdir", str(tmp_path), str(config)])
    assert f"{results} has no {rehearsal.MARKER}; nothing was deleted" in str(error.value)
    assert (results / "eval/record.json").exists()
    with pytest.raises(rehearsal.RehearsalError, match="is not a rehearsal directory"):  # nor is it used without --clean
        rehearsal.rehearse(config, results)
    assert sorted(p.name for p in results.iterdir()) == ["eval"]

    made = tmp_path / "made"
    rehearsal._claim(made, config)
    (made / "results").mkdir()
    rehearsal.delete_workdirs([made])
    assert not made.exists()


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory):
    """Every paper config and one broken config, rehearsed two at a time as `advprune rehearse config/paper/*.yaml`
    does: config path -> (its Rehearsal or the error that stopped it, its scratch directory)."""
    root = tmp_path_factory.mktemp("rehearsals")
    # an option the schema accepts but the method refuses when its prune job builds it: rho_max below rho0
    broken = root / "broken.yaml"
    broken.write_text((REPO / "config/paper/pwoa_mnist.yaml").read_text().replace("pwoa: {lambda_x", "pwoa: {rho0: 0.5, rho_max: 0.1, lambda_x"))
    assert cfg.load_config(broken)["prune"]["methods"]["pwoa"]["rho_max"] == 0.1
    paths = [broken, *PAPER]  # the broken one first: it fails early and leaves its worker to the others
    results = rehearsal.rehearse_many(paths, root / "runs")
    return {path: (result, root / "runs" / path.stem) for path, result in zip(paths, results)}


def test_a_failing_job_is_named_in_one_line(rehearsed):
    (error, _), = [value for path, value in rehearsed.items() if path.name == "broken.yaml"]
    assert isinstance(error, rehearsal.RehearsalError), error
    expected = r"broken.yaml failed \(Error in rule prune: .*rho_max.* \(log: .*/pwoa/s0.99.log\)\); Snakemake's log: .*snakemake0.log$"
    assert re.search(expected, str(error)) and "\n" not in str(error), error


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_every_paper_config_rehearses_end_to_end(path, rehearsed):
    result, tmp_path = rehearsed[path]
    if isinstance(result, Exception):
        raise result
    config = cfg.load_config(path)
    runs = rehearsal.invocations(rehearsal.shrink(config))
    assert result.invocations == len(runs) and result.jobs > 0
    evals = sorted(p.relative_to(tmp_path / "results/eval") for p in (tmp_path / "results/eval").rglob("*.json"))
    sparsity = cfg.fmt_sparsity(rehearsal.rehearsal_sparsity(config))
    for run in runs:  # every pair of every invocation: its dense model and every method evaluated
        for dataset in run["datasets"]:
            for arch in run["archs"]:
                base = Path(dataset, arch, f"seed{config['seeds'][0]}")
                assert base / "dense/s0.json" in evals
                assert all(base / method / f"s{sparsity}.json" in evals for method in config["prune"]["methods"])
    assert (tmp_path / "results/report/tables/robustness.csv").is_file()
    # every part of AutoAttack ran, on its rehearsal budget (a smoke test, never a result)
    record = json.loads((tmp_path / "results/eval" / evals[0]).read_text())
    assert record["autoattack_version"] == "rehearsal" and set(record["autoattack_breakdown"]) == {"clean", "apgd-ce", "apgd-t", "fab-t", "square"}
