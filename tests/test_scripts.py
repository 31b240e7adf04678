import subprocess

import pytest

from conftest import PYTHON, REPO, env_with_repo, load_script

SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("*.py"))


def test_every_rule_has_its_entryload_script():
    rules = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    used = {line.split("scripts/")[1].strip().strip('"') for line in rules.splitlines() if "../../scripts/" in line}
    assert used == set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_entry_script_runs_as_a_plain_cli(script):
    run = subprocess.run([PYTHON, str(REPO / "scripts" / script), "--help"], capture_output=True, text=True, env=env_with_repo(), cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage:") and "--log" in run.stdout



CONFIG = str(REPO / ".test/config.yaml")
PRUNE = ["--config", CONFIG, "--dataset", "digits", "--method", "lwm", "--sparsity", "0.5", "--out-model", "p.pt", "--out-info", "p.json"]
BAD_ARGS = [
    ("prune", {"--sparsity": "1.5"}, "argument --sparsity: 1.5 is greater than or equal to the maximum of 1"),
    ("prune", {"--sparsity": "-0.5"}, "argument --sparsity: -0.5 is less than or equal to the minimum of 0"),
    ("prune", {"--method": "nosuch"}, "--method 'nosuch' is not a key of prune.methods"),
    ("prune", {"--dataset": "imagenet"}, "argument --dataset: 'imagenet' is not one of: digits"),
    ("prune", {"--model": "missing.pt"}, "argument --model: missing.pt: no such file"),
    ("prune", {"--config": "missing.yaml"}, "config file missing.yaml: No such file or directory"),
    ("prune", {"--config": "broken.yaml"}, "config file broken.yaml: not valid YAML (line 2)"),
    ("prune", {"--config": "invalid.yaml"}, "config key 'pretrain.epochs': 'ten' is not of type 'integer'"),
    ("evaluate", {"--sparsity": "1"}, "argument --sparsity: 1.0 is not in [0, 1)"),
    ("pretrain", {"--arch": "vit"}, "argument --arch: 'vit' is not one of: small_cnn"),
    ("report", {"--formats": "gif"}, "argument --formats: 'gif' is not one of: png, pdf, svg"),
]


@pytest.mark.parametrize("script,change,message", BAD_ARGS, ids=[f"{s} {' '.join(next(iter(c.items())))}" for s, c, _ in BAD_ARGS])
def test_a_script_run_alone_rejects_bad_arguments_in_one_line(tmp_path, monkeypatch, capsys, script, change, message):
    import yaml

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes(b"")
    (tmp_path / "broken.yaml").write_text("seeds: [0\n")
    invalid = yaml.safe_load((REPO / ".test/config.yaml").read_text())
    invalid["pretrain"]["epochs"] = "ten"
    (tmp_path / "invalid.yaml").write_text(yaml.safe_dump(invalid))
    args = {
        "prune": dict(zip(PRUNE[::2], PRUNE[1::2]), **{"--model": "model.pt"}),
        "evaluate": {"--config": CONFIG, "--dataset": "digits", "--arch": "small_cnn", "--model": "model.pt", "--out": "e.json"},
        "pretrain": {"--config": CONFIG, "--dataset": "digits", "--arch": "small_cnn", "--out-model": "m.pt", "--out-curve": "c.csv", "--resume": "s.pt"},
        "report": {"--tables-dir": "t", "--out-dir": "r"},
    }[script] | change
    with pytest.raises(SystemExit) as stop:
        load_script(script).cli([x for pair in args.items() for x in pair])
    err = capsys.readouterr().err + (stop.value.code if isinstance(stop.value.code, str) else "")
    assert stop.value.code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not any(tmp_path.glob("p.*")) and not any(tmp_path.glob("m.*"))  # nothing written
