"""Every command line in the READMEs works as written on a fresh copy of the repository.

The cheap ones run verbatim (the plain script commands, the `--forcerun` example, the recovery after a kill);
the whole pipeline is dry-run; the rest are run by the tests named in COVERED, or need what a test cannot have
(a real cluster site, a remote, minutes of benchmarks). Every line must be classified here, so a command added
to a README is considered too; statically, none may call a tool that is not on PATH after bin/env, or sudo.
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from advprune import staleness
from advprune.checkpoint import load_model

from conftest import REPO, copy_repo, env_with_repo, planned

READMES = [REPO / "README.md", REPO / "slurm/README.md"]
TOOLS = ("snakemake", "dvc", "python", "python3", "pytest", "advprune", "gto", "pip")

# Run verbatim, in this order, in one fresh copy.
SCRIPTS = [
    ".venv/bin/python scripts/fetch_data.py --dataset digits --raw-dir resources/raw/digits --out-dir resources/data/digits",
    ".venv/bin/python scripts/pretrain.py --dataset digits --arch small_cnn --out-model m.pt --out-curve c.csv --resume m.state.pt",
    ".venv/bin/python scripts/prune.py --dataset digits --model m.pt --method lwm --sparsity 0.9 --out-model p.pt --out-info p.json",
    ".venv/bin/python scripts/evaluate.py --dataset digits --arch small_cnn --model p.pt --method lwm --sparsity 0.9 --out p.eval.json",
]
FORCERUN = ".venv/bin/snakemake --cores all results/eval/digits/small_cnn/seed0/lwm/s0.9.json --forcerun prune -n"
UNLOCK = ".venv/bin/snakemake --cores all --unlock"
AGAIN = ".venv/bin/snakemake --cores all"
# Dry-run (-n appended): the whole default pipeline is minutes.
DRY = {"bin/env && .venv/bin/snakemake --cores all": ".venv/bin/snakemake --cores all"}
# Run by other tests, or not runnable by a test, with the reason.
COVERED = {
    "bin/env && .venv/bin/pytest -q": "the test suite itself; bin/env is not run here (it would install into the shared .venv)",
    ".venv/bin/snakemake --profile slurm --profile ~/.config/snakemake/advprune-site --configfile config/paper/ap_benchmark.yaml":
        "needs a real site profile; tests/test_slurm.py runs --profile slurm with a filled-in site-example.yaml",
    "slurm/cluster/start.sh": "tests/test_slurm.py (session fixture)",
    ".venv/bin/snakemake --profile slurm --profile slurm/cluster --configfile .test/config.yaml": "tests/test_slurm.py (pipeline fixture)",
    "slurm/cluster/stop.sh": "tests/test_slurm.py (session fixture)",
    ".venv/bin/advprune publish": "tests/test_dvc.py",
    ".venv/bin/advprune export": "tests/test_export.py (advprune export on a run's records and checkpoints)",
    'git commit -m "Results of <what you ran>"': "placeholder message",
    "git clone <repo> && cd <repo> && bin/env": "placeholder repository",
    ".venv/bin/advprune restore": "tests/test_dvc.py (restore with the recorded options)",
    ".venv/bin/snakemake -n $(.venv/bin/advprune run-args)": "tests/test_dvc.py (snakemake -n with advprune run-args)",
    ".venv/bin/snakemake --report report.html $(.venv/bin/advprune run-args)": "tests/test_dvc.py (--report)",
    ".venv/bin/python benchmarks/train_step.py": "a benchmark (minutes)",
    ".venv/bin/python benchmarks/pipeline.py": "a benchmark (the whole pipeline)",
    ".venv/bin/python benchmarks/autoattack.py": "a benchmark (trains a model, then AutoAttack twice: minutes)",
    ".venv/bin/python benchmarks/scale.py": "a benchmark (a width sweep: tens of minutes)",
    ".venv/bin/python benchmarks/verification.py": "a benchmark (minutes)",
    ".venv/bin/advprune rehearse config/paper/ap_benchmark.yaml": "tests/test_rehearsal.py (every paper config)",
    ".venv/bin/python benchmarks/dag.py": "a benchmark (plans tens of thousands of jobs)",
    ".venv/bin/python benchmarks/parity.py": "a benchmark (tens of minutes); tests/test_parity.py runs its --quick form",
    ".venv/bin/python benchmarks/gpu_check.py": "needs a GPU; its --quick CPU form is a benchmark run too (minutes)",
}


def readme_commands(path: Path) -> list[str]:
    """The command lines of a README's bash blocks, comments and continuation comments dropped."""
    lines = []
    for block in re.findall(r"^ *```bash\n(.*?)^ *```", path.read_text(), re.S | re.M):
        for line in block.splitlines():
            command = re.split(r"\s+#", line.strip(), maxsplit=1)[0].strip()
            if command and not command.startswith("#"):
                lines.append(command)
    return lines


def test_every_readme_command_is_run_or_accounted_for():
    known = set(SCRIPTS) | {FORCERUN, UNLOCK, AGAIN} | set(DRY) | set(COVERED)
    unknown = [line for line in readme_commands(REPO / "README.md") if line not in known]
    assert not unknown, f"README commands no test runs or accounts for (add them to tests/test_readme.py): {unknown}"


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_readme_commands_call_only_what_is_on_path(readme):
    # bin/env puts nothing on PATH: the project's tools are .venv/bin/...; a root shell usually has no sudo.
    commands = readme_commands(readme)
    commands += [span for span in re.findall(r"`([^`\n]+)`", readme.read_text()) if len(span.split()) >= 3]  # inline commands to type
    bad = [c for c in commands for part in re.split(r"&&|\|\||;|\$\(", c)
           if (words := part.split()) and (words[0] in TOOLS or words[0] == "sudo")]
    assert not bad, bad


def _fresh_copy(root: Path):
    """A fresh copy of the repository with this environment as its .venv (bin/env's result)."""
    repo = copy_repo(root)
    (repo / ".venv").symlink_to(REPO / ".venv")
    env = env_with_repo()
    env["PYTHONPATH"] = str(repo)  # the copy's advprune
    return repo, env


@pytest.fixture(scope="module")
def fresh_copy(tmp_path_factory):
    return _fresh_copy(tmp_path_factory.mktemp("readme"))


def _shell(repo, env, command, **kwargs):
    return subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, **kwargs)


def test_the_forcerun_example_plans_only_that_model(fresh_copy):
    repo, env = fresh_copy
    run = _shell(repo, env, FORCERUN)
    assert run.returncode == 0, run.stderr[-2000:]
    plan = planned(run)
    # prune -> finetune -> evaluate of that one model (plus what it needs that a fresh copy lacks), no report.
    assert {rule: plan.get(rule) for rule in ("prune", "finetune", "evaluate")} == {"prune": 1, "finetune": 1, "evaluate": 1}, plan
    assert set(plan) <= {"fetch_data", "pretrain", "prune", "finetune", "evaluate"}, plan


@pytest.fixture(scope="module")
def dry_runs(fresh_copy):
    repo, env = fresh_copy
    return {line: _shell(repo, env, DRY[line] + " -n") for line in DRY}


@pytest.mark.parametrize("line", sorted(DRY))
def test_the_pipeline_commands_plan(dry_runs, line):
    run = dry_runs[line]
    assert run.returncode == 0, run.stderr[-2000:]
    assert planned(run)["report"] == 1


def _planned_files(run) -> dict[str, set[str]]:
    """'output' -> every output of the jobs a dry run prints (but `all`), 'all' -> the inputs of `all`."""
    files = {"output": set(), "all": set()}
    rule = None
    for line in (run.stdout + run.stderr).splitlines():
        if m := re.match(r"(?:local)?rule (\w+):$", line):
            rule = m[1]
        elif m := re.match(r"    (input|output): (.*)$", line):
            if (rule == "all") == (m[1] == "input"):
                files["all" if rule == "all" else "output"].update(m[2].split(", "))
    return files


@pytest.mark.parametrize("line", sorted(DRY))
def test_the_default_target_requires_every_output(dry_runs, line):
    # Snakemake re-runs a job whose output is missing only when the target, or a job it runs, requires that output:
    # an output the target does not require would, once deleted or lost to a failed re-run, never be recomputed.
    files = _planned_files(dry_runs[line])
    assert len(files["output"]) > 100 and any("/studies/" in f for f in files["output"]), files["output"]
    assert files["output"] <= files["all"], sorted(files["output"] - files["all"])


@pytest.mark.slow  # about 30 s: the four scripts on the default config (pretraining and AutoAttack run for real)
def test_the_plain_script_commands_run_as_written(fresh_copy):
    repo, env = fresh_copy
    for line in SCRIPTS:
        run = _shell(repo, env, line, timeout=300)
        assert run.returncode == 0, f"{line}\n{run.stderr[-3000:]}"
    assert (repo / "p.eval.json").exists()


@pytest.mark.slow  # a real Snakemake run killed mid-job (seconds: the data preparation only)
def test_after_a_kill_unlock_then_the_same_command_finishes(tmp_path):
    repo, env = _fresh_copy(tmp_path)
    target = " resources/data/digits/meta.json"  # the cheapest job of the README's command
    job_log = repo / "logs/fetch_data/digits.log"
    proc = subprocess.Popen(["bash", "-c", AGAIN + target], cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not job_log.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its job, as a lost session or the OOM killer would
    proc.wait()

    locked = _shell(repo, env, AGAIN + target)
    assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr  # why README says --unlock
    assert _shell(repo, env, UNLOCK).returncode == 0
    again = _shell(repo, env, AGAIN + target, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (repo / "resources/data/digits/meta.json").exists()


def _edit_config(repo: Path, edit) -> None:
    path = repo / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    edit(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run of a small config (.test's, one pruned model), written as config/config.yaml so that the
    README's commands run it as written."""
    repo, env = _fresh_copy(tmp_path_factory.mktemp("recovery"))
    (repo / "config/config.yaml").write_text((repo / ".test/config.yaml").read_text())

    def small(config):
        config["pretrain"]["epochs"] = 1
        config["prune"].update(sparsities=[0.9], methods={"lwm": {}})
        config["finetune"]["epochs"] = 0
        config["evaluate"]["n_examples"] = 16
        config["report"]["formats"] = ["png"]

    _edit_config(repo, small)
    run = _shell(repo, env, AGAIN, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return repo, env


def _stale(repo: Path) -> list[str]:
    return staleness.problems("results/tables", repo) + staleness.problems("results/report", repo)


# README, "When something fails": a damaged checkpoint or results file is named; "delete that file and run the
# same command again". Each such file of the small run, and what the command then re-makes.
DAMAGED = {
    "results/finetune/digits/small_cnn/seed0/lwm/s0.9/model.pt": {"finetune", "evaluate", "aggregate", "report"},
    "results/eval/digits/small_cnn/seed0/lwm/s0.9.json": {"evaluate", "aggregate", "report"},
    "results/tables/summary.csv": {"aggregate", "report"},
    "results/finetune/digits/small_cnn/seed0/lwm/s0.9/curve.csv": {"finetune", "evaluate", "aggregate", "report"},
    "results/prune/digits/small_cnn/seed0/lwm/s0.9/info.json": {"prune", "finetune", "evaluate", "aggregate", "report"},
}


@pytest.mark.slow  # a dry run per file
def test_a_deleted_output_is_planned_again_with_what_depends_on_it(finished_run):
    repo, env = finished_run
    for name, rules in DAMAGED.items():
        path = repo / name
        path.rename(path.with_name(path.name + ".aside"))  # its modification time kept for when it comes back
        assert set(planned(_shell(repo, env, AGAIN + " -n"))) == rules | {"all"}, name
        path.with_name(path.name + ".aside").rename(path)
    assert planned(_shell(repo, env, AGAIN + " -n")) == {}


@pytest.mark.slow  # three runs of a few jobs each
def test_a_stopped_or_failed_rerun_marks_the_tables_stale_and_the_readme_remedies_recompute(finished_run):
    repo, env = finished_run
    checkpoint = "results/finetune/digits/small_cnn/seed0/lwm/s0.9/model.pt"
    records = [repo / f"results/eval/digits/small_cnn/seed0/{m}.json" for m in ("dense/s0", "lwm/s0.9")]
    assert not _stale(repo)
    settings = [json.loads(r.read_text())["provenance"]["config_hash"] for r in records]
    _edit_config(repo, lambda config: config["evaluate"]["pgd"].update(steps=5))  # both records are made again

    # Ctrl-C (SIGINT to the foreground process group, as a terminal sends it) once an evaluation has started:
    # Snakemake deletes the records it was re-making; the tables built from them are marked stale.
    output = repo / "stopped.out"
    with open(output, "w") as out:  # SIGINT's default action as in a terminal, also when pytest itself runs in the background
        proc = subprocess.Popen(["bash", "-c", AGAIN], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 300
        while "rule evaluate:" not in output.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(2)  # into the job
        assert proc.poll() is None, output.read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=120)
    assert not all(r.exists() for r in records)
    assert (repo / "results/tables/STALE.txt").exists() and (repo / "results/report/STALE.txt").exists()

    # A damaged checkpoint, found when the same command re-makes the evaluation that reads it, is named with the remedy.
    (repo / checkpoint).write_bytes((repo / checkpoint).read_bytes()[:1000])
    failed = _shell(repo, env, AGAIN, timeout=600)
    job_log = repo / "logs/evaluate/digits/small_cnn/seed0/lwm/s0.9.log"
    assert failed.returncode != 0 and job_log.exists(), failed.stderr[-3000:]
    assert f"{checkpoint}: truncated or corrupt checkpoint" in job_log.read_text() and "delete it" in job_log.read_text()
    assert "STALE" in _stale(repo)[0]  # never silently old

    # README: "delete that file and run the same command again; Snakemake recomputes it and what depends on it"
    # (for the checkpoint and, in the same run, each kind of results file).
    for name in DAMAGED:
        (repo / name).unlink(missing_ok=True)
    again = _shell(repo, env, AGAIN, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all((repo / name).exists() for name in DAMAGED)
    load_model(repo / checkpoint)
    assert all(json.loads(r.read_text())["provenance"]["config_hash"] != before for r, before in zip(records, settings))
    assert not _stale(repo)
    assert planned(_shell(repo, env, AGAIN + " -n")) == {}
