"""`advprune publish` and `advprune restore`: version a finished run with DVC, and bring it back elsewhere
without recomputing anything. Snakemake stays the only DAG; DVC only stores and compares.

publish: after a complete run, `dvc add` the run's outputs (results/, logs/, the prepared datasets) and a
snapshot of Snakemake's own provenance (.snakemake/metadata: the params and code each output was made with),
list the checkpoints as DVC artifacts in dvc.yaml, push everything to the default DVC remote (a local directory
remote is set up when there is none), and stage exactly the small files for git to commit.

publish refuses a run that is not complete, whose tables or report do not match the records they were built
from (advprune/staleness.py), or whose code has uncommitted changes (the commit would not hold the code the
results were made with, and could not be restored).

restore: on a fresh clone, `dvc pull`, check every pulled file against the hash this commit's .dvc files give it
(DVC does not, by default: a damaged object in the remote would be restored silently; damaged files are named and
removed), put Snakemake's provenance back, check that the restored outputs were made with this commit's settings
and code, then `snakemake --touch` so that modification times follow the DAG (DVC does not keep them, and
Snakemake would re-run anything whose input looks newer than its output).

DVC's usage analytics are off for every dvc command run here (DVC_NO_ANALYTICS) and in the repository's DVC
config (core.analytics false, committed with the results), so that no dvc command sends anything.

Both take the Snakemake options of the run (e.g. `--configfile config/paper/ap_benchmark.yaml`) after `--`.
publish records them in published-run.yaml (committed with the results, beside the config file it names);
restore given none uses the recorded ones, and prints the `snakemake -n` that checks the restored run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

REMOTE_NAME = "advprune"
METADATA = Path(".snakemake/metadata")
METADATA_SNAPSHOT = Path("results/.snakemake-metadata")  # inside results/, so it travels with results.dvc
ARTIFACT_STAGES = {"pretrained": "pretrain", "pruned": "prune", "finetuned": "finetune"}
RUN_RECORD = Path("published-run.yaml")  # the Snakemake options of the published run, committed with it
# Files publish writes and stages itself, and where code lives (an untracked file there would be missing from the commit).
PUBLISH_WRITES = {".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore", "dvc.yaml", str(RUN_RECORD)}
CODE_DIRS = ("advprune/", "scripts/", "workflow/")


class PublishError(RuntimeError):
    pass


def _run(cmd: list[str], capture: bool = False) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if run.returncode != 0:
        raise PublishError(f"`{' '.join(cmd)}` failed:\n{(run.stdout + run.stderr).strip()[-3000:]}")
    if not capture and run.stdout.strip():
        print(run.stdout.strip())
    return run


def _tool(name: str) -> str:
    """dvc/snakemake from the same environment as this Python (the project's .venv), else from PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _plan(snakemake_args: list[str], *extra: str) -> tuple[dict[str, int], str]:
    """Rule -> count of the jobs a dry run plans ({} = nothing to do), and Snakemake's reasons in one line."""
    out = _run([_tool("snakemake"), "--dry-run", "--cores", "1", *extra, *snakemake_args], capture=True)
    text = out.stdout + out.stderr
    if "Job stats:" not in text:
        return {}, ""
    table = text.split("Job stats:")[1].split("\n\n")[0]
    reasons = text.split("Reasons:")[-1].split("\n\n")[0].splitlines()[2:] if "Reasons:" in text else []
    reasons = "; ".join(f"{cause.strip().rstrip(':')}: {jobs.strip()}" for cause, jobs in zip(reasons[::2], reasons[1::2]))
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] not in ("total", "all")}, reasons


def _pending_jobs(snakemake_args: list[str], *extra: str) -> dict[str, int]:
    return _plan(snakemake_args, *extra)[0]


def _configfile(snakemake_args: list[str]) -> str:
    for i, arg in enumerate(snakemake_args):
        if arg == "--configfile" and i + 1 < len(snakemake_args):
            return snakemake_args[i + 1]
        if arg.startswith("--configfile="):
            return arg.split("=", 1)[1]
    return "config/config.yaml"


def tracked_paths(snakemake_args: list[str]) -> list[Path]:
    """What the run produced, as DVC tracks it: results/ (checkpoints, records, tables, report), logs/, and the
    prepared datasets (so a restore need not download them again) when they live inside the repository."""
    from advprune.config import load_config

    data_root = Path(load_config(_configfile(snakemake_args))["data"]["root"])
    paths = [Path("results"), Path("logs")]
    if not data_root.is_absolute() and ".." not in data_root.parts:
        paths.append(data_root)
    else:
        print(f"advprune publish: data.root {data_root} lies outside the repository and is not versioned")
    return [p for p in paths if p.exists()]


def _uncommitted_code(configfile: str) -> list[str]:
    """Paths with changes git has not committed, but for publish's own files and the run's config (committed with
    the results): tracked files anywhere, untracked ones where code lives."""
    entries = iter(_run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=all"], capture=True).stdout.split("\0"))
    changed = []
    for entry in entries:
        if not entry:
            continue
        state, path = entry[:2], entry[3:]
        if "R" in state or "C" in state:
            next(entries)  # the name it was renamed or copied from
        if path in PUBLISH_WRITES or path == configfile or path.endswith((".dvc", "/.gitignore")):
            continue
        if state != "??" or path.startswith(CODE_DIRS):
            changed.append(path)
    return changed


def _ensure_remote(url: str | None) -> str:
    if not Path(".dvc").is_dir():
        _run([_tool("dvc"), "init", "--quiet"])
    _run([_tool("dvc"), "config", "core.analytics", "false"])  # in .dvc/config, committed: no dvc command on a clone sends usage data
    current = subprocess.run([_tool("dvc"), "config", "core.remote"], capture_output=True, text=True)  # fails when unset
    if current.returncode == 0 and current.stdout.strip():
        return current.stdout.strip()
    url = url or os.environ.get("ADVPRUNE_DVC_REMOTE") or str(Path.cwd().parent / f"{Path.cwd().name}-dvc-remote")
    if "://" not in url:  # a local directory: absolute, so that clones anywhere on this machine find it
        url = str(Path(url).expanduser().resolve())
        Path(url).mkdir(parents=True, exist_ok=True)
    _run([_tool("dvc"), "remote", "add", "--default", REMOTE_NAME, url])
    print(f"advprune publish: DVC remote {REMOTE_NAME!r} -> {url} (committed in .dvc/config)")
    return REMOTE_NAME


def artifacts() -> dict:
    """DVC artifacts (dvc.yaml) for every pretrained, pruned and fine-tuned checkpoint of the run."""
    found = {}
    for kind, stage in ARTIFACT_STAGES.items():
        for path in sorted(Path("results", stage).rglob("model.pt")):
            parts = path.parent.relative_to(Path("results", stage)).parts  # dataset, arch, seedN[, method, sX]
            # DVC artifact names allow letters, digits, '-' and '_' ('/' would be read as a dvc.yaml directory)
            name = "-".join([kind, *parts]).replace(".", "_")
            labels = [kind, *parts[:2]] + ([parts[3]] if len(parts) > 3 else [])
            found[name] = {"path": path.as_posix(), "type": "model", "desc": f"{kind} checkpoint {'/'.join(parts)}", "labels": labels}
    return found


def _write_artifacts(found: dict) -> None:
    """Replace dvc.yaml's `artifacts:` with `found`, keeping the rest of the file and its comments."""
    from ruamel.yaml import YAML

    yaml = YAML()
    path = Path("dvc.yaml")
    doc = yaml.load(path.read_text()) if path.exists() else {}
    doc["artifacts"] = found
    with open(path, "w") as fh:
        yaml.dump(doc, fh)


def _record_run(snakemake_args: list[str]) -> list[str]:
    """Write RUN_RECORD; returns the files it names that git must carry too (the config file, if in the repo)."""
    import yaml

    RUN_RECORD.write_text("# Written by `advprune publish`: the Snakemake options of the published run. `advprune restore`\n"
                          "# reuses them when given none; add them to every later snakemake command on these results.\n"
                          + yaml.safe_dump({"snakemake_args": snakemake_args}, default_flow_style=None))
    config = Path(_configfile(snakemake_args))
    return [str(config)] if not config.is_absolute() and ".." not in config.parts else []


def recorded_args() -> list[str]:
    """The Snakemake options publish recorded (RUN_RECORD); [] when there is no record."""
    import yaml

    return list(yaml.safe_load(RUN_RECORD.read_text())["snakemake_args"]) if RUN_RECORD.exists() else []


def publish(snakemake_args: list[str], remote_url: str | None = None) -> list[str]:
    """Returns the paths staged in git."""
    from advprune import staleness

    config = Path(_configfile(snakemake_args))
    if config.is_absolute() or ".." in config.parts:
        raise PublishError(f"the run's config file {config} lies outside the repository: a clone of the commit could not restore the run; "
                           "copy it into the repository and run with that copy")
    uncommitted = _uncommitted_code(config.as_posix())
    if uncommitted:
        listed = ", ".join(uncommitted[:5]) + (f" and {len(uncommitted) - 5} more" if len(uncommitted) > 5 else "")
        raise PublishError(f"uncommitted changes ({listed}): the commit of the results would not hold the code they were made with; "
                           "commit them, re-run snakemake (it re-runs what they change), then publish")
    pending = _pending_jobs(snakemake_args)
    if pending:
        raise PublishError(f"the run is not complete ({', '.join(f'{r}: {n}' for r, n in pending.items())} to do): finish it with snakemake first")
    stale = staleness.problems("results/tables") + staleness.problems("results/report")
    if stale:
        raise PublishError("the tables or the report do not match what they were built from:\n  " + "\n  ".join(stale) +
                           "\nrun the run's snakemake command (with --forcerun aggregate if it has nothing to do), then publish")
    paths = tracked_paths(snakemake_args)
    remote = _ensure_remote(remote_url)
    if METADATA_SNAPSHOT.exists():
        shutil.rmtree(METADATA_SNAPSHOT)
    if METADATA.is_dir():
        shutil.copytree(METADATA, METADATA_SNAPSHOT)
    _write_artifacts(artifacts())
    run_files = _record_run(snakemake_args)
    _run([_tool("dvc"), "add", "--quiet", *map(str, paths)])
    _run([_tool("dvc"), "push", "--remote", remote])
    small = [f"{p}.dvc" for p in paths] + [str(p.parent / ".gitignore") for p in paths] + [".gitignore", ".dvc/config", ".dvc/.gitignore", ".dvcignore", "dvc.yaml",
                                                                                           str(RUN_RECORD), *run_files]
    small = sorted({p for p in small if Path(p).exists()})
    _run(["git", "add", "--", *small])
    staged = _run(["git", "diff", "--cached", "--name-only"], capture=True).stdout.split()
    print("advprune publish: pushed; staged for git:\n  " + "\n  ".join(staged) + "\ncommit them, e.g.: git commit -m 'Results of <what you ran>'")
    return staged


def _md5(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def _dvc_outs() -> list[tuple[str, str, Path]]:
    """(.dvc file, hash, path) of every output the commit's .dvc files track."""
    import yaml

    return [(dvc_file, out["md5"], Path(dvc_file).parent / out["path"])
            for dvc_file in _run(["git", "ls-files", "--", "*.dvc"], capture=True).stdout.split()
            for out in yaml.safe_load(Path(dvc_file).read_text())["outs"]]


class Damaged(NamedTuple):
    path: Path
    why: str
    cached: Path | None  # DVC's cached copy of the damaged content, under the hash it should have had


def damaged_files() -> list[Damaged]:
    """Every file the commit's .dvc files track whose content is not what they say, checked from the hashes in
    git down: a directory's listing (a DVC object) against its hash in the .dvc file, then every file against its
    hash in the listing. `dvc pull` itself trusts the remote's objects."""
    cache = Path(_run([_tool("dvc"), "cache", "dir"], capture=True).stdout.strip()) / "files" / "md5"
    damaged = []
    for dvc_file, md5, path in _dvc_outs():
        entries = [(path, md5)]
        if md5.endswith(".dir"):
            listing = cache / md5[:2] / md5[2:]
            if not listing.is_file() or _md5(listing) != md5.removesuffix(".dir"):
                damaged.append(Damaged(path, f"DVC's listing of this directory does not match its hash in {dvc_file}", listing))
                continue
            entries = [(path / entry["relpath"], entry["md5"]) for entry in json.loads(listing.read_text())]
        for file, expected in entries:
            if not file.is_file():
                damaged.append(Damaged(file, "missing", None))
            elif (got := _md5(file)) != expected:
                damaged.append(Damaged(file, f"md5 {got}, published as {expected}", cache / expected[:2] / expected[2:]))
    return damaged


def restore(snakemake_args: list[str]) -> None:
    if not list(Path(".").glob("*.dvc")):
        raise PublishError("no .dvc files here: nothing was published in this commit (advprune publish)")
    if not snakemake_args:
        snakemake_args = recorded_args()
        if snakemake_args:
            print(f"advprune restore: the run's Snakemake options, from {RUN_RECORD}: {shlex.join(snakemake_args)}")
    config = _configfile(snakemake_args)
    if not Path(config).is_file():
        raise PublishError(f"the run's config file {config} is not in this checkout (it was published with the results: check out that commit)")
    _run([_tool("dvc"), "pull"])
    damaged = damaged_files()
    for file in damaged:  # nothing may read them; DVC's copy goes too, so that a later pull fetches the file again
        if file.cached:
            file.cached.unlink(missing_ok=True)
        if file.path.is_file():
            file.path.unlink()
    if damaged:
        raise PublishError(f"{len(damaged)} restored file(s) are not what this commit published (removed, with DVC's cached copies, so that "
                           "nothing reads them):\n  " + "\n  ".join(f"{file.path}: {file.why}" for file in damaged) +
                           "\nrepair the DVC remote (dvc push from an intact copy of the run) and restore again, or run snakemake to recompute them")
    if METADATA_SNAPSHOT.is_dir():
        shutil.copytree(METADATA_SNAPSHOT, METADATA, dirs_exist_ok=True)
    # Every reason to re-run but modification times, which DVC does not keep: with one mtime for every restored file
    # (Snakemake compares them whatever --rerun-triggers says), what is left is settings, code and missing files.
    now = time.time()
    for _, _, tracked in _dvc_outs():
        for path in [tracked, *tracked.rglob("*")] if tracked.is_dir() else [tracked]:
            os.utime(path, (now, now))
    stale, reasons = _plan(snakemake_args, "--rerun-triggers", "params", "input", "code", "software-env")
    if stale:
        raise PublishError(f"the restored results were not made with this commit's settings and code, or lack outputs "
                           f"({', '.join(f'{r}: {n}' for r, n in stale.items())} would run; Snakemake's reasons: {reasons}); "
                           "nothing was touched: run snakemake to recompute them")
    _run([_tool("snakemake"), "--touch", "--cores", "1", "--quiet", *snakemake_args])
    left = _pending_jobs(snakemake_args)
    if left:
        raise PublishError(f"after touching, snakemake still plans {left}")
    print(f"advprune restore: done; `{shlex.join(['.venv/bin/snakemake', '-n', *snakemake_args])}` has nothing to do")


def main(argv: list[str] | None = None) -> None:
    from advprune.config import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["rehearse"]:  # its own options: advprune/rehearsal.py
        from advprune.rehearsal import main as rehearse

        return rehearse(argv[1:])
    if argv[:1] == ["export"]:  # its own options: advprune/interop/export.py
        from advprune.interop.export import main as export

        return export(argv[1:])
    p = argparse.ArgumentParser(prog="advprune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="version the finished run with DVC and push it to the remote")
    pub.add_argument("--remote-url", help="where to create the DVC remote when the repository has none (default: $ADVPRUNE_DVC_REMOTE, "
                                          "else the directory <repo>-dvc-remote beside the repository); any DVC URL: s3://, ssh://, ...")
    sub.add_parser("restore", help="pull a published run and make `snakemake -n` see it as up to date")
    for sp in sub.choices.values():
        sp.add_argument("snakemake_args", nargs="*", help="the run's Snakemake options, after --, e.g. -- --configfile config/paper/x.yaml")
    sub.add_parser("rehearse", help="run paper configs shrunk end to end on CPU (advprune rehearse --help)")
    sub.add_parser("export", help="the AP benchmark's and RobustBench's submission files of a finished run (advprune export --help)")
    sub.add_parser("run-args", help=f"print the published run's Snakemake options ({RUN_RECORD}), e.g. snakemake -n $(advprune run-args)")
    a = p.parse_args(argv)
    if not Path("Snakefile").exists():
        sys.exit("advprune: run this from the repository root (where the Snakefile is)")
    try:
        if a.command == "publish":
            publish(a.snakemake_args, a.remote_url)
        elif a.command == "restore":
            restore(a.snakemake_args)
        else:
            print(shlex.join(recorded_args()))
    except PublishError as error:
        sys.exit(f"advprune {a.command}: {error}")
    except ConfigError as error:  # the run's config, read to find what to version
        sys.exit(f"advprune {a.command}: {error}")


if __name__ == "__main__":
    main()
