import subprocess

import pytest

from conftest import PYTHON, REPO, env_with_repo

SCRIPTS = sorted(p.name for p in (REPO / "scripts").glob("*.py"))


def test_every_rule_has_its_entry_script():
    rules = "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    used = {line.split("scripts/")[1].strip().strip('"') for line in rules.splitlines() if "../../scripts/" in line}
    assert used == set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_entry_script_runs_as_a_plain_cli(script):
    run = subprocess.run([PYTHON, str(REPO / "scripts" / script), "--help"], capture_output=True, text=True, env=env_with_repo(), cwd=REPO)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage:") and "--log" in run.stdout
