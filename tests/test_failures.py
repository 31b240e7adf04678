"""Damaged files and failed jobs: every failure names its file and cause, and the job's own log has it."""

import json
import subprocess
from pathlib import Path

import pytest
import torch

from advprune.checkpoint import CheckpointError, load_model, save_model
from advprune.models import build_model

from conftest import PYTHON, REPO, SNAKEMAKE, env_with_repo, load_script

META = {"n_classes": 10, "channels": 1, "image_size": [8, 8]}


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_model(path, build_model("small_cnn", 10, 1, (8, 8), width=4), "small_cnn", {"width": 4}, META)
    return path.read_bytes()


DAMAGE = [
    ("half", lambda b: b[: len(b) // 2], "truncated or corrupt checkpoint"),
    ("tail cut", lambda b: b[:-10], "truncated or corrupt checkpoint"),
    ("empty", lambda b: b"", "empty file, not a checkpoint"),
    ("text", lambda b: b"epochs: 10\n", "not a torch checkpoint"),
]


@pytest.mark.parametrize("name,damage,message", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_checkpoint_is_named_with_what_is_wrong(tmp_path, checkpoint_bytes, name, damage, message):
    path = tmp_path / "model.pt"
    path.write_bytes(damage(checkpoint_bytes))
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert str(error.value).startswith(f"{path}: {message}") and "\n" not in str(error.value)


def test_a_tensor_file_is_not_taken_for_a_model(tmp_path):
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="not a model checkpoint of this project"):
        load_model(tmp_path / "tensor.pt")


def test_a_failed_job_leaves_its_error_and_traceback_in_its_log(tmp_path, checkpoint_bytes):
    (tmp_path / "model.pt").write_bytes(checkpoint_bytes[: len(checkpoint_bytes) // 2])
    run = subprocess.run([PYTHON, str(REPO / "scripts/sensitivity.py"), "--config", str(REPO / ".test/config.yaml"), "--dataset", "digits",
                          "--model", "model.pt", "--out", "s.csv", "--log", "job.log"], cwd=tmp_path, capture_output=True, text=True, env=env_with_repo())
    assert run.returncode != 0
    log = (tmp_path / "job.log").read_text()
    assert "job failed: CheckpointError: model.pt: truncated or corrupt checkpoint" in log
    assert "Traceback (most recent call last)" in log and "load_model" in log
    assert "model.pt: truncated or corrupt checkpoint" in run.stderr  # the console still shows it


@pytest.mark.parametrize("name", ["train_x.npy", "meta.json"])
def test_damaged_prepared_data_is_named(tmp_path, digits_dir, name):
    import shutil

    from advprune.data import load_split

    data = shutil.copytree(digits_dir, tmp_path / "digits")
    (data / name).write_bytes((data / name).read_bytes()[:40])
    with pytest.raises(ValueError, match=f"^{data / name}: damaged prepared data .*delete {data} and re-run"):
        load_split(data, "train")


# Results files other jobs wrote: one line naming the file and how to recompute it, never a bare parser traceback.
_BITS = {"clean": "1111111100", "pgd": "1111000000", "autoattack": "1110000000"}
_RECORD = {"dataset": "digits", "arch": "small_cnn", "seed": 0, "method": "lwm", "impl": "lwm", "sparsity_target": 0.9, "sparsity_measured": 0.9,
           "threat_model": {"norm": "Linf", "eps": 0.1}, "n_examples": 10, "clean_acc": 0.8, "pgd_acc": 0.4, "autoattack_acc": 0.3,
           "per_point": _BITS, "points_sha256": "p" * 64, "data_sha256": "d" * 64, "layers": [], "provenance": {"config_hash": "c"}}
RECORD = json.dumps(_RECORD) + "\n"
STUDY_RECORD = json.dumps({**_RECORD, "finetune_mode": "none"}) + "\n"
DAMAGED_JSON = [
    ("half", RECORD[: len(RECORD) // 2], "truncated or corrupt JSON"),
    ("empty", "", "empty file, not JSON"),
    ("binary", b"\x80\x04\x95PK\x03\x04", "unreadable"),
    ("a list", "[1, 2]\n", "not a JSON object (a list)"),
    ("lacks a key", '{"threat_model": {}}\n', "lacks the key(s) n_examples, layers, provenance"),
]
DAMAGED_CSV = [
    ("last row cut", "epoch,train_loss\n0,0.5\n1", "truncated or corrupt CSV (line 3 has 1 fields, the header 2)"),
    ("a row too long", "epoch,train_loss\n0,0.5,7\n", "truncated or corrupt CSV (line 2 has 3 fields, the header 2)"),
    ("empty", "", "lacks the column(s) epoch (empty file)"),
    ("binary", b"\x80\x04\x95PK\x03\x04\xff\xfe", "not a CSV table"),
    ("another table", "module,sensitivity\nfc,0.1\n", "lacks the column(s) epoch"),
    ("not a number", "epoch,train_loss\n0,0.5\n\x00\x00,0.4\n", "corrupt CSV (line 3: epoch '\\x00\\x00' is not a number)"),
]


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("name,content,message", DAMAGED_JSON, ids=[d[0] for d in DAMAGED_JSON])
def test_a_damaged_results_json_is_named_with_what_to_do(tmp_path, name, content, message):
    from advprune.entry import read_json

    path = _write(tmp_path / "s0.9.json", content)
    with pytest.raises(CheckpointError) as error:
        read_json(path, ("threat_model", "n_examples", "layers", "provenance"))
    assert str(error.value).startswith(f"{path}: {message}") and str(error.value).endswith("(delete it and re-run to recompute it)")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name,content,message", DAMAGED_CSV, ids=[d[0] for d in DAMAGED_CSV])
def test_a_damaged_results_csv_is_named_with_what_to_do(tmp_path, name, content, message):
    from advprune.entry import read_csv

    path = _write(tmp_path / "curve.csv", content)
    with pytest.raises(CheckpointError) as error:
        read_csv(path, ("epoch",), numbers=("epoch",))
    assert str(error.value).startswith(f"{path}: {message}") and str(error.value).endswith("(delete it and re-run to recompute it)")
    assert "\n" not in str(error.value)


def test_results_written_by_the_jobs_read_back(tmp_path):
    from advprune.checkpoint import write_json
    from advprune.entry import read_csv, read_json, write_csv

    write_csv([{"epoch": 0, "loss": 0.5}, {"epoch": 1}], tmp_path / "curve.csv", header=["epoch"])
    assert read_csv(tmp_path / "curve.csv", ("epoch",)) == [{"epoch": "0", "loss": "0.5"}, {"epoch": "1", "loss": ""}]
    write_csv([], tmp_path / "none.csv")  # aggregate's table of a stage that did not run: no header
    assert read_csv(tmp_path / "none.csv") == []
    write_json({"method": {"method": "lwm"}, "info": {}}, tmp_path / "info.json")
    assert read_json(tmp_path / "info.json", ("method", "info"))["method"] == {"method": "lwm"}



# Each results file aggregate reads, damaged in turn: (argument of main, path under the results directory).
AGGREGATE_INPUTS = [
    ("evals", "eval/digits/small_cnn/seed0/lwm/s0.9.json"),
    ("sensitivity", "sensitivity/digits/small_cnn/seed0/sensitivity.csv"),
    ("pretrain_curves", "pretrain/digits/small_cnn/seed0/curve.csv"),
    ("finetune_curves", "finetune/digits/small_cnn/seed0/lwm/s0.9/curve.csv"),
    ("prune_infos", "prune/digits/small_cnn/seed0/lwm/s0.9/info.json"),
    ("study", "studies/finetune/digits/small_cnn/seed0/lwm/s0.9/none/eval.json"),
]


@pytest.mark.parametrize("kind,damaged", AGGREGATE_INPUTS, ids=[a[0] for a in AGGREGATE_INPUTS])
def test_aggregate_names_a_damaged_input(tmp_path, kind, damaged):
    aggregate = load_script("aggregate")
    results = tmp_path / "results"
    good = {"evals": RECORD, "sensitivity": "module,sensitivity\nfc,0.1\n", "pretrain_curves": "epoch\n0\n", "finetune_curves": "epoch\n0\n",
            "prune_infos": '{"method": {"method": "lwm"}, "info": {}}', "study": STUDY_RECORD}
    paths = {k: str(_write(results / path, good[k])) for k, path in AGGREGATE_INPUTS}
    _write(results / damaged, good[kind][: len(good[kind]) // 2])
    out = {name: str(results / f"tables/{name}.csv") for name in ("summary", "layer_sparsity", "sensitivity", "training_curves", "prune_curves",
                                                                   "per_point", "distances", "provenance", *aggregate.STUDY_COLUMNS)}
    out |= {"metrics": str(results / "tables/summary.json"), "plots": str(results / "plots")}
    with pytest.raises(CheckpointError, match=f"^{results / damaged}: .*delete it and re-run"):
        aggregate.main([paths["evals"]], [paths["sensitivity"]], [paths["pretrain_curves"]], [paths["finetune_curves"]], out,
                       prune_infos=[paths["prune_infos"]], studies={"study_finetune": [{"path": paths["study"], "labels": {}}]})


def test_report_names_a_damaged_table(tmp_path):
    table = _write(tmp_path / "tables/summary.csv", b"dataset,arch\n\xff\xfe\x00digits")
    with pytest.raises(CheckpointError, match=f"^{table}: not a CSV table"):
        load_script("report").main(str(tmp_path / "tables"), str(tmp_path / "report"), ["png"], 30)
    assert not (tmp_path / "report").exists()


def test_prune_names_a_damaged_sensitivity_table(tmp_path):
    table = _write(tmp_path / "sensitivity.csv", "module,module_index,n_params,base_loss,perturbed_loss,sensitivity\nconv1,0,36,0.5,0.7")
    with pytest.raises(CheckpointError, match=r"^.*sensitivity.csv: truncated or corrupt CSV \(line 2 has 5 fields, the header 6\)"):
        load_script("prune")._read_sensitivity(table)
    table.write_text("module,module_index,n_params,base_loss,perturbed_loss,sensitivity\nconv1,0,36,0.5,0.7,0.2\n")
    read = load_script("prune")._read_sensitivity(table)
    assert list(read["module"]) == ["conv1"] and float(read["sensitivity"][0]) == 0.2  # the two columns mrpf reads


def test_the_slurm_profile_plans_where_sinfo_gives_no_answer(tmp_path):
    # SLURM's controller not answering (or SLURM's commands failing): the profile requests its own values, and as
    # numbers (issue 18: fetch_data's memory reached Snakemake as the text '8000', a ResourceConversionError).
    # squeue only has to exist: the SLURM plugin refuses to load without it; a dry run never calls it.
    fake = tmp_path / "bin"
    fake.mkdir()
    for command in ("sinfo", "squeue"):
        (fake / command).write_text("#!/bin/sh\nexit 1\n")
        (fake / command).chmod(0o755)
    env = env_with_repo()
    env["PATH"] = f"{fake}:{env['PATH']}"
    run = subprocess.run([SNAKEMAKE, "--profile", str(REPO / "slurm"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path / "run"),
                          "-n", "--configfile", str(REPO / ".test/config.yaml")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    fetch = (run.stdout + run.stderr).split("rule fetch_data:")[1].split("\n\n")[0]
    assert "mem_mb=8000," in fetch


def test_tables_are_marked_stale_until_rebuilt_and_name_a_changed_source(tmp_path, monkeypatch):
    from advprune import staleness

    monkeypatch.chdir(tmp_path)  # sources are recorded as the jobs name them, relative to the run's directory
    tables, record = Path("results/tables"), Path("results/eval/r.json")
    record.parent.mkdir(parents=True)
    record.write_text('{"clean_acc": 0.85}')
    assert not staleness.mark_stale(tables, {"evaluate": 1}, "aggregate")  # no tables yet: nothing to mark
    tables.mkdir()
    (tables / "summary.csv").write_text("clean_acc\n0.85\n")
    assert not staleness.mark_stale(tables, {}, "aggregate")  # no job planned
    staleness.record_sources([record], tables / staleness.SOURCES)
    assert staleness.problems(tables) == []
    assert staleness.mark_stale(tables, {"evaluate": 2}, "aggregate")  # a run starts re-making a record
    assert staleness.problems(tables)[0].startswith("results/tables/STALE.txt: STALE: the Snakemake run started")
    assert "(evaluate: 2)" in (tables / "STALE.txt").read_text()
    staleness.record_sources([record], tables / staleness.SOURCES)  # aggregate finished
    assert not (tables / "STALE.txt").exists() and staleness.problems(tables, root=tmp_path) == []
    record.write_text('{"clean_acc": 0.99}')
    assert staleness.problems(tables)[0].startswith("results/tables was built from results/eval/r.json, which has changed since (sha256 ")
    record.unlink()
    assert staleness.problems(tables) == ["results/tables was built from results/eval/r.json, which is missing"]
