"""Every command line in the READMEs works as written on a fresh copy of the repository.

The cheap ones run verbatim (the plain script commands, the `--forcerun` example, the recovery after a kill);
the whole pipeline is dry-run; the rest are run by the tests named in COVERED, or need what a test cannot have
(a real cluster site, a remote, minutes of benchmarks). Every line must be classified here, so a command added
to a README is considered too; statically, none may call a tool that is not on PATH after bin/env, or sudo.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("line", sorted(DRY))
def test_the_pipeline_commands_plan(fresh_copy, line):
    repo, env = fresh_copy
    run = _shell(repo, env, DRY[line] + " -n")
    assert run.returncode == 0, run.stderr[-2000:]
    assert planned(run)["report"] == 1


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
