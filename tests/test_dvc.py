"""Versioning with DVC as a user does it, in a temporary git repository with a local DVC remote: run → publish →
fresh clone → restore → `snakemake -n` has nothing to do, checkpoints byte-identical; a plotting change re-runs the
report only; a second run with one config value changed → `dvc metrics diff` shows it."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, copy_repo, env_with_repo, planned

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent  # snakemake, dvc and advprune of this environment


def _run(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = env_with_repo()
    env["PYTHONPATH"] = str(repo)  # this copy's advprune
    env["HOME"] = str(repo.parent / "home")  # a home of its own: what the commands leave there is checked
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    run = subprocess.run(list(cmd), cwd=repo, capture_output=True, text=True, env=env)
    assert run.returncode == 0 or not check, f"{' '.join(cmd)}:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return run


def _snakemake(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return _run(repo, str(BIN / "snakemake"), "--cores", "2", "--configfile", "run.yaml", *args)


def _hashes(repo: Path) -> dict:
    files = [p for d in ("results", "resources/data") for p in (repo / d).rglob("*") if p.is_file()]
    return {p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A run of a tiny config in a fresh git repository, published to a local DVC remote and committed."""
    root = tmp_path_factory.mktemp("dvc")
    repo = copy_repo(root / "lab")
    config = yaml.safe_load((REPO / ".test/config.yaml").read_text())
    config["pretrain"]["epochs"] = 2
    config["prune"].update(sparsities=[0.9], methods={"lwm": {}})
    config["finetune"]["epochs"] = 0
    config["evaluate"]["n_examples"] = 32
    (repo / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _run(repo, "git", "init", "-q", "-b", "main")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "code and config")
    _snakemake(repo)
    _run(repo, str(BIN / "advprune"), "publish", "--remote-url", str(root / "remote"), "--", "--configfile", "run.yaml")
    staged = _run(repo, "git", "status", "--porcelain").stdout.splitlines()
    _run(repo, "git", "commit", "-qm", "results: finetune epochs 0")
    return root, repo, config, staged


def test_publish_stages_exactly_the_small_files(published):
    _, _, _, staged = published
    assert sorted(staged) == sorted(f"A  {p}" for p in [".dvc/.gitignore", ".dvc/config", ".dvcignore", "logs.dvc", "resources/.gitignore",
                                                         "resources/data.dvc", "results.dvc", "published-run.yaml"]) + ["M  dvc.yaml"], staged


def test_restore_on_a_fresh_clone_recomputes_nothing(published):
    root, repo, _, _ = published
    clone = root / "clone"
    _run(root, "git", "clone", "-q", str(repo), str(clone))
    # The run's --configfile comes from what publish recorded; README's follow-up command reads it back.
    restored = _run(clone, str(BIN / "advprune"), "restore")
    assert "--configfile run.yaml" in restored.stdout
    recorded = _run(clone, str(BIN / "advprune"), "run-args").stdout.split()
    assert recorded == ["--configfile", "run.yaml"]
    assert planned(_run(clone, str(BIN / "snakemake"), "-n", *recorded)) == {}
    assert planned(_snakemake(clone, "-n")) == {}
    before, after = _hashes(repo), _hashes(clone)
    assert any(name.endswith("model.pt") for name in before) and after == before  # checkpoints byte-identical
    assert json.loads((clone / "results/tables/summary.json").read_text())

    # Checkpoints are DVC artifacts: versioned with a GTO tag, fetched by name.
    name = "pruned-digits-small_cnn-seed0-lwm-s0_9"
    _run(clone, str(BIN / "gto"), "register", name)
    _run(clone, str(BIN / "dvc"), "artifacts", "get", ".", name, "-o", str(root / "artifact.pt"))
    assert hashlib.sha256((root / "artifact.pt").read_bytes()).hexdigest() == before["results/prune/digits/small_cnn/seed0/lwm/s0.9/model.pt"]

    # A plotting change re-runs the report from the restored tables, and nothing else.
    style = clone / "advprune/report/style.py"
    style.write_text(style.read_text().replace('DENSE_COLOR = "#000000"', 'DENSE_COLOR = "#333333"'))
    assert planned(_snakemake(clone, "-n")) == {"report": 1, "all": 1}
    _snakemake(clone)
    changed = {name for name, digest in _hashes(clone).items() if before.get(name) != digest}
    assert changed and all(name.startswith(("results/report/", "results/benchmarks/report")) for name in changed), changed

    # The HTML report from the restored results alone: self-contained, with captions, categories and provenance.
    _snakemake(clone, "--report", "report.html")
    html = (clone / "report.html").read_text()
    assert "<script src=\"http" not in html and "Robustness vs sparsity" in html and "Clean, PGD and AutoAttack accuracy" in html
    assert "Provenance" in html and "git commit" in html


def test_dvc_analytics_are_off_and_dvc_writes_nothing_in_home(published):
    root, repo, _, _ = published
    config = _run(repo, "git", "show", "HEAD:.dvc/config").stdout
    assert re.search(r"^\s*analytics = false$", config, re.M), config
    # publish, restore, gto and dvc artifacts get have run: DVC's telemetry would leave ~/.config/iterative/telemetry
    assert not [p for p in (root / "home").rglob("*") if re.search("dvc|iterative", str(p.relative_to(root)), re.I)]


def _refused(repo: Path) -> str:
    run = _run(repo, str(BIN / "advprune"), "publish", "--", "--configfile", "run.yaml", check=False)
    assert run.returncode != 0, run.stdout
    return run.stderr


def test_publish_refuses_uncommitted_code_and_tables_that_do_not_match_their_records(published):
    _, repo, _, _ = published
    style = repo / "advprune/report/style.py"
    original = style.read_text()
    style.write_text(original + "\n# an edit\n")
    assert "uncommitted changes (advprune/report/style.py)" in _refused(repo)
    style.write_text(original)
    (repo / "scripts/extra.py").write_text("")  # code the commit would lack
    assert "uncommitted changes (scripts/extra.py)" in _refused(repo)
    (repo / "scripts/extra.py").unlink()

    # A record edited after the tables were built, its modification time kept: Snakemake sees nothing to do.
    record = repo / "results/eval/digits/small_cnn/seed0/lwm/s0.9.json"
    content, times = record.read_bytes(), record.stat()
    record.write_text(json.dumps({**json.loads(content), "clean_acc": 0.994}))
    os.utime(record, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert planned(_snakemake(repo, "-n")) == {}
    refused = _refused(repo)
    assert "results/tables was built from results/eval/digits/small_cnn/seed0/lwm/s0.9.json, which has changed since" in refused
    record.write_bytes(content)
    os.utime(record, ns=(times.st_atime_ns, times.st_mtime_ns))

    (repo / "results/report/STALE.txt").write_text("STALE: a run started that re-makes what the report is built from\n")
    assert "results/report/STALE.txt: STALE" in _refused(repo)
    (repo / "results/report/STALE.txt").unlink()


def _remote_object(repo: Path, remote: Path, relpath: str) -> Path:
    """The DVC remote's object of results/<relpath>, as results.dvc and its directory listing name it."""
    listing = yaml.safe_load((repo / "results.dvc").read_text())["outs"][0]["md5"]
    entries = json.loads((repo / ".dvc/cache/files/md5" / listing[:2] / listing[2:]).read_text())
    md5 = next(entry["md5"] for entry in entries if entry["relpath"] == relpath)
    return remote / "files/md5" / md5[:2] / md5[2:]


def test_restore_names_and_removes_files_damaged_in_the_remote(published):
    root, repo, _, _ = published
    record, checkpoint = "eval/digits/small_cnn/seed0/dense/s0.json", "prune/digits/small_cnn/seed0/lwm/s0.9/model.pt"
    objects = {name: _remote_object(repo, root / "remote", name) for name in (record, checkpoint)}
    intact = {name: path.read_bytes() for name, path in objects.items()}
    for path in objects.values():
        path.chmod(0o644)
    objects[record].write_text(json.dumps({**json.loads(intact[record]), "clean_acc": 0.994}))
    flipped = bytearray(intact[checkpoint])
    middle = len(flipped) // 2
    flipped[middle:middle + 40] = bytes(b ^ 0xFF for b in flipped[middle:middle + 40])
    objects[checkpoint].write_bytes(bytes(flipped))

    clone = root / "damaged"
    _run(root, "git", "clone", "-q", str(repo), str(clone))
    restore = _run(clone, str(BIN / "advprune"), "restore", check=False)
    assert restore.returncode != 0
    for name in (record, checkpoint):
        assert re.search(rf"results/{re.escape(name)}: md5 \w+, published as \w+", restore.stderr), restore.stderr
        assert not (clone / "results" / name).exists()  # nothing reads a damaged file
    assert "other settings or code" not in restore.stderr
    for name, path in objects.items():
        path.write_bytes(intact[name])


def test_two_runs_differing_in_one_value_show_in_dvc_metrics_diff(published):
    _, repo, config, _ = published
    config["finetune"]["epochs"] = 2
    (repo / "run.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert planned(_snakemake(repo, "-n")) == {"finetune": 1, "evaluate": 1, "aggregate": 1, "report": 1, "all": 1}
    _snakemake(repo)
    _run(repo, str(BIN / "advprune"), "publish", "--", "--configfile", "run.yaml")
    _run(repo, "git", "add", "run.yaml")
    _run(repo, "git", "commit", "-qm", "results: finetune epochs 2")
    diff = json.loads(_run(repo, str(BIN / "dvc"), "metrics", "diff", "HEAD~1", "HEAD", "--json").stdout)
    changes = diff["results/tables/summary.json"]
    changed_keys = {key for key, value in changes.items() if value.get("diff")}
    assert "digits/small_cnn.lwm@0.9.clean_acc" in changed_keys, changes
    assert not any(".dense@0." in key for key in changed_keys)  # the dense model did not change
