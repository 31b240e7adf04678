"""Rehearsal of a paper configuration: its whole Snakemake DAG, run end to end on CPU in minutes, before a GPU
hour is spent on it.

`advprune rehearse config/paper/x.yaml` validates the configuration, derives a shrunk one from it (`shrink`),
writes every dataset it names as raw files in the dataset's official on-disk format (advprune/data/synthetic.py:
random images, a few per class), writes the public checkpoints it starts from in their real cache layout, plans
the full DAG (`snakemake -n` with every seed, sparsity, dataset and architecture), then runs the real Snakefile
in a scratch directory on a covering set of (dataset, architecture) pairs (`invocations`: one Snakemake run per
dataset) and checks after each run that every report output exists.

What is shrunk, and only that: one seed; one sparsity (the one a study uses when a study's sparsity is among the
config's, so the study reuses the main jobs as it does at full scale; else the largest); epochs to one pass (zero stays
zero); attack steps to two, sensitivity ascent to one step; batch sizes to 16 (every run still takes several
batches); architecture widths to a few channels (widened where the sparsity would leave fewer weights than
layers); the data to a few images of four classes per dataset
(the network keeps the dataset's class count and image size); evaluation to 8 test points and one latency
repeat, HO-FMN to two trials of two steps on 8 validation points and two steps on the test points; the
(dataset, architecture) product to a covering set (every dataset, every architecture on every
image geometry of the config's datasets, every method on every pair, the studies on the first dataset's).
What is kept: every dataset, architecture, method entry, method option that selects a code path,
study, objective, threat model, every AutoAttack part and the verification settings: the same rules,
scripts and library functions run, and the tables and figures have the shapes a full run gives them (one
seed, one sparsity fewer rows).

What a rehearsal does not prove: that the full run fits in GPU memory or its time limits, that training
converges or reaches the papers' numbers, that downloads and the md5s of the published archives work (the
raw files are written here, `download: false`), that the real public checkpoints are the architecture the
config names (only their layout is exercised), numerical behaviour that needs many epochs (schedules, HARP's
gamma freezing after the target is met, PwoA's later ADMM cycles), and the other sparsities' and seeds' jobs
(the same code with other numbers), and a bug specific to one (dataset, architecture) pair outside the
covering set. AutoAttack runs its `rehearsal` version: every part on the same code paths with 3 iterations and
20 Square queries instead of 100 and 5,000 (standard AutoAttack's ~7,000 sequential model calls per model
would dominate a rehearsal's time; the parts' full budgets are tested against the original in
tests/test_autoattack.py).
"""

from __future__ import annotations

import copy
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from advprune import config as cfg
from advprune.report import expected_outputs

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 1
ATTACK_STEPS = 2
BATCH_SIZE = 16
EVAL_POINTS = 8
TRAIN_PER_CLASS = 10  # four classes: 40 training images, 4 of them carved off as validation
TEST_IMAGES = 16
WIDTH = 2  # every architecture with a `width` option (resnet18, vgg16_bn: 2 = 2..16 channels; WRNs: base width)
KEPT_PER_LAYER = 4  # ... widened until the rehearsal's sparsity keeps this many weights per layer on average
# option keys of method entries and fine-tuning overrides that count epochs (0 keeps its meaning: none)
EPOCH_KEYS = ("epochs", "admm_epochs", "retrain_epochs", "finetune_epochs", "eps_ramp_epochs")
CERTIFIED_RAMP = 10**20  # eps_ramp_epochs of every training section: a certified objective's eps stays ~1e-22 (see _shrink_training)
PASS_KEYS = ("epoch_steps",)  # method options that stretch an epoch over several passes of the data (PwoA): one pass
# Written into every scratch directory a rehearsal makes: only such a directory is used again or deleted (--clean).
MARKER = ".advprune-rehearsal"


class RehearsalError(RuntimeError):
    """The rehearsal failed: the message names the stage and where its log is."""


def _fewer(value, at_most: int):
    return min(value, at_most) if isinstance(value, int) and value > 0 else value


def _shrink_training(section: dict) -> None:
    for key in EPOCH_KEYS:
        if key in section:
            section[key] = _fewer(section[key], EPOCHS)
    if "eps_ramp_epochs" in section:
        # a certified objective trains at the foot of its ramp (eps ~1e-22): the same code path, bounds and all, but on the
        # rehearsal's tiny synthetic splits BatchNorm's batch statistics blow the interval bounds up by ~1e20 (a fresh
        # WRN-28-4 at eps 1e-6: margin bounds ~4e14), so any real eps gives NaN weights, which says nothing about the config
        section["eps_ramp_epochs"] = CERTIFIED_RAMP
    for key in PASS_KEYS:
        if section.get(key):
            section[key] = 1
    if "batch_size" in section:
        section["batch_size"] = max(2, _fewer(section["batch_size"], BATCH_SIZE))
    if "attack" in section:
        section["attack"]["steps"] = _fewer(section["attack"]["steps"], ATTACK_STEPS)


def rehearsal_sparsity(config: dict) -> float:
    """The one sparsity a rehearsal runs: a study's (when it is a main-grid sparsity, so the study reuses main
    jobs exactly as at full scale), else the largest (the most degenerate masks and channel counts)."""
    sparsities = sorted({s for key in config["prune"]["methods"] for s in cfg.method_sparsities(config, key)})
    for study in config["studies"].values():
        if study.get("sparsity") in sparsities:
            return study["sparsity"]
    return max(sparsities)


def rehearsal_width(arch: str, datasets: list[str], sparsity: float) -> int:
    """The narrowest width (WIDTH, doubled as needed) at which the sparsity still keeps KEPT_PER_LAYER weights
    per prunable layer on average: a network so narrow that 99.9 % leaves fewer weights than layers fails
    where the paper-width one does not (HARP needs one weight per layer), which is no finding."""
    import torch.nn as nn

    from advprune.data import DATASETS
    from advprune.models import build_model

    spec = DATASETS[datasets[0]]
    width = WIDTH
    while width < 64:
        model = build_model(arch, spec.n_classes, spec.channels, spec.image_size, width=width)
        layers = [m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if (1 - sparsity) * sum(layers) >= KEPT_PER_LAYER * len(layers):
            break
        width *= 2
    return width


def shrink(config: dict, device: str = "cpu") -> dict:
    """The rehearsal configuration of a validated paper configuration (see the module docstring)."""
    small = copy.deepcopy(config)
    small["seeds"] = small["seeds"][:1]
    small["prune"]["sparsities"] = [rehearsal_sparsity(config)]
    for spec in small["prune"]["methods"].values():
        spec.pop("sparsities", None)  # every method at the one rehearsal sparsity
    small["data"].update(root="resources/data", raw_root="resources/raw", download=False)
    # start checkpoints inside the scratch directory: never over a real cache
    pretrain = small["pretrain"]
    if pretrain.get("robustbench"):
        pretrain["robustbench"]["root"] = "models"
    if pretrain.get("checkpoint"):
        pretrain["checkpoint"] = "start/{dataset}/{arch}/" + Path(pretrain["checkpoint"]).name
    schema = cfg._schema()["properties"]["models"]["properties"]
    for arch in small["archs"]:
        if "width" in schema.get(arch, {}).get("properties", {}):
            small["models"].setdefault(arch, {})["width"] = rehearsal_width(arch, small["datasets"], small["prune"]["sparsities"][0])
    _shrink_training(small["pretrain"])
    _shrink_training(small["finetune"])
    sens = small["sensitivity"]
    sens.update(n_examples=min(sens["n_examples"], EVAL_POINTS), ascent_steps=1)
    sens["attack"]["steps"] = 1
    for spec in small["prune"]["methods"].values():
        _shrink_training(spec)
        if isinstance(spec.get("finetune"), dict):
            _shrink_training(spec["finetune"])
        if "rho_every" in spec:  # PwoA: the Z/U/rho update must happen inside the one epoch
            spec["rho_every"] = 1
        if "taylor_batches" in spec:
            spec["taylor_batches"] = 1
    ev = small["evaluate"]
    ev["n_examples"] = EVAL_POINTS
    ev["pgd"]["steps"] = _fewer(ev["pgd"]["steps"], ATTACK_STEPS)
    ev["autoattack"] = {**ev["autoattack"], "version": "rehearsal"}
    if ev.get("hofmn"):
        ev["hofmn"] = {**ev["hofmn"], "steps": ATTACK_STEPS, "trials": ATTACK_STEPS, "tune_steps": ATTACK_STEPS, "tune_batch": EVAL_POINTS}
    if ev.get("latency"):
        ev["latency"] = {"batch_size": EVAL_POINTS, "warmup": 0, "repeats": 1}
    small["device"] = device
    return small


def _classes(n_classes: int) -> list[int]:
    """Four labels spread over the whole range: the first, the last and two between (the head's every end)."""
    return sorted({0, n_classes // 3, 2 * n_classes // 3, n_classes - 1})


def write_data(config: dict, workdir: Path) -> None:
    """Every dataset of the (shrunk) config as raw files in its official format, where fetch_data reads them."""
    from advprune.data import DATASETS
    from advprune.data.synthetic import write_dataset

    for i, name in enumerate(config["datasets"]):
        raw = workdir / config["data"]["raw_root"] / name
        if not raw.exists():
            write_dataset(name, raw, _classes(DATASETS[name].n_classes), TRAIN_PER_CLASS, TEST_IMAGES, seed=i)


def robustbench_layout(model) -> dict:
    """Our WRN's weights as RobustBench's WideResNet checkpoints hold them: {'state_dict': {'module.<key>': ...}},
    blockN.layer.i.*, convShortcut, bn1 for the final norm, and the unused sub_block1 of its CIFAR-100 models."""
    per_stage = len(model.blocks) // 3
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if parts[0] == "blocks":
            i = int(parts[1])
            rest = ["convShortcut" if p == "shortcut" else p for p in parts[2:]]
            key = ".".join([f"block{i // per_stage + 1}", "layer", str(i % per_stage), *rest])
            if i < per_stage:
                state["sub_block1" + key.removeprefix("block1")] = value.clone()
        elif parts[0] == "bn":
            key = "bn1." + ".".join(parts[1:])
        state[key] = value
    return {"state_dict": {f"module.{k}": v for k, v in state.items()}}


def write_checkpoints(config: dict, workdir: Path) -> None:
    """The public checkpoints a (shrunk) config starts from, at the path and in the layout the pipeline reads
    (RobustBench: its cache layout and key names; pretrain.checkpoint: a plain state dict), random weights of
    the shrunk architecture."""
    import torch

    from advprune.data import DATASETS
    from advprune.models import build_model

    for dataset in config["datasets"]:
        spec = DATASETS[dataset]
        for arch in config["archs"]:
            start = cfg.start_checkpoint(config, dataset, arch)
            if start is None:
                continue
            path = workdir / start["path"]
            torch.manual_seed(0)
            model = build_model(arch, spec.n_classes, spec.channels, spec.image_size, **config["models"].get(arch, {}))
            state = robustbench_layout(model) if "robustbench" in start and hasattr(model, "blocks") else {"state_dict": model.state_dict()}
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, path)


def invocations(config: dict) -> list[dict]:
    """The (datasets, archs, studies) of each Snakemake invocation: a covering set of (dataset, architecture)
    pairs instead of their full product. Every dataset runs, and every architecture runs on every input geometry
    (channels x height x width) among the config's datasets; every method runs on every pair; the studies run
    with the first invocation. Pairs of one dataset share an invocation."""
    from advprune.data import DATASETS

    by_geometry: dict[tuple, list[str]] = {}
    for dataset in config["datasets"]:
        spec = DATASETS[dataset]
        by_geometry.setdefault((spec.channels, *spec.image_size), []).append(dataset)
    archs = config["archs"]
    per_dataset: dict[str, list[str]] = {}
    for datasets in by_geometry.values():
        for i in range(max(len(datasets), len(archs))):
            chosen = per_dataset.setdefault(datasets[i % len(datasets)], [])
            if archs[i % len(archs)] not in chosen:
                chosen.append(archs[i % len(archs)])
    runs = [{"datasets": [d], "archs": [a for a in archs if a in per_dataset[d]], "studies": {}} for d in config["datasets"]]
    runs[0]["studies"] = config["studies"]
    return runs


@dataclass
class Rehearsal:
    config: str
    workdir: Path
    seconds: float  # wall time
    cpu_seconds: float  # of every process it ran (Snakemake and the jobs)
    jobs: int
    invocations: int


def _snakemake(workdir: Path, configfile: Path, log: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as out:
        return subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                               "--configfile", str(configfile), *args], stdout=out, stderr=subprocess.STDOUT, env=env, check=False)


def _claim(workdir: Path, config_path) -> None:
    """Make `workdir` a rehearsal directory (MARKER), or refuse it when it holds anything else: a rehearsal writes
    results/, resources/ and logs/ there and runs Snakemake in it."""
    if workdir.is_dir() and not (workdir / MARKER).exists() and any(workdir.iterdir()):
        raise RehearsalError(f"{workdir} is not a rehearsal directory (it has files and no {MARKER}, which advprune rehearse writes): "
                             "choose another --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text(f"scratch directory of `advprune rehearse {config_path}`: it may be deleted (advprune rehearse --clean)\n")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rehearse(config_path: str | Path, workdir: str | Path, cores: int = 2, device: str = "cpu") -> Rehearsal:
    """Rehearse `config_path` in `workdir` (created; an earlier rehearsal there is continued, as Snakemake
    continues any run): plan the full DAG of the shrunk config with every seed, sparsity, dataset and
    architecture (`snakemake -n`), then run the covering invocations end to end and check each one's report.
    Raises ConfigError or RehearsalError, in one line."""
    started, cpu = time.monotonic(), _children_cpu()
    config = cfg.load_config(config_path)
    workdir = Path(workdir).resolve()
    _claim(workdir, config_path)
    small = shrink(config, device)
    write_data(small, workdir)
    write_checkpoints(small, workdir)
    header = f"# rehearsal of {config_path} (advprune/rehearsal.py)\n"

    # the whole grid, planned: every input function and wildcard of the full-size DAG
    methods = {key: {**spec, **({"sparsities": config["prune"]["methods"][key]["sparsities"]} if "sparsities" in config["prune"]["methods"][key] else {})}
               for key, spec in small["prune"]["methods"].items()}
    planned = {**small, "seeds": config["seeds"], "prune": {**small["prune"], "sparsities": config["prune"]["sparsities"], "methods": methods}}
    (workdir / "plan.yaml").write_text(header + yaml.safe_dump(planned, sort_keys=False))
    run = _snakemake(workdir, workdir / "plan.yaml", workdir / "plan.log", "-n", "--quiet", "rules")
    if run.returncode != 0:
        plan_log = workdir / "plan.log"
        raise RehearsalError(f"rehearsal of {config_path}: planning the full DAG failed: {_last_line(plan_log)} (log: {plan_log})")

    jobs = 0
    runs = invocations(small)
    for i, part in enumerate(runs):
        configfile, log = workdir / f"config{i}.yaml", workdir / f"snakemake{i}.log"
        configfile.write_text(header + yaml.safe_dump({**small, **part}, sort_keys=False))
        run = _snakemake(workdir, configfile, log, "--cores", str(cores))
        text = log.read_text()
        if run.returncode != 0:
            failures = "; ".join(_failures(text, workdir)) or _last_line(log)
            raise RehearsalError(f"rehearsal of {config_path} failed ({failures}); Snakemake's log: {log}")
        missing = [p for p in expected_outputs(str(workdir / "results/report"), small["report"]["formats"]) if not Path(p).is_file()]
        if missing:
            raise RehearsalError(f"rehearsal of {config_path}: the run finished but the report lacks {missing[0]} ({len(missing)} missing); "
                                 f"log: {log}")
        done = re.findall(r"(\d+) of \d+ steps \(100%\) done", text)
        jobs += int(done[-1]) if done else 0
    return Rehearsal(str(config_path), workdir, time.monotonic() - started, _children_cpu() - cpu, jobs, len(runs))


def _failures(text: str, workdir: Path) -> list[str]:
    """'Error in rule prune: <the job log's last line> (log: <path>)' for each failed job of a Snakemake log."""
    out = []
    for rule, block in re.findall(r"Error in rule (\w+):\n((?:[ \t].*\n?)*)", text):
        job_log = re.search(r"log: (\S+)", block)
        path = workdir / job_log[1] if job_log else None
        out.append(f"Error in rule {rule}: {_last_line(path) if path and path.is_file() else 'no job log'} (log: {path})")
    return out


def _last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def rehearse_many(config_paths: list, workdir: str | Path, cores: int = 2, device: str = "cpu", concurrent: int = 2,
                  clean: bool = False) -> list[Rehearsal | Exception]:
    """Rehearse several configs, `concurrent` at a time, each in its own process and in workdir/<config name>.
    One rehearsal leaves a core idle whenever its DAG narrows to one job (data, pretraining, sensitivity, the
    report), about 40 % of its time on 2 cores; a second one fills those gaps. Returns, in order, each
    config's Rehearsal or the RehearsalError that stopped it. Before anything is written or deleted, every config is
    validated (ConfigError) and, with `clean`, every directory to delete must be a rehearsal's (RehearsalError)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    for path in config_paths:
        cfg.load_config(path)
    workdirs = [Path(workdir) / Path(path).stem for path in config_paths]
    if clean:
        delete_workdirs(workdirs)
    # spawn: the workers only start Snakemake, and a fork of a process holding torch's threads is unsafe
    with ProcessPoolExecutor(max(1, concurrent), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_rehearse_or_error, path, work, cores, device) for path, work in zip(config_paths, workdirs)]
        return [future.result() for future in futures]


def delete_workdirs(workdirs: list[Path]) -> None:
    """Delete the scratch directories (--clean), all of them or, when one was not made by a rehearsal, none."""
    foreign = [path for path in workdirs if path.exists() and not (path / MARKER).is_file()]
    if foreign:
        raise RehearsalError(f"--clean deletes only directories a rehearsal made: {foreign[0]} has no {MARKER}; nothing was deleted")
    for path in workdirs:
        if path.exists():
            shutil.rmtree(path)


def _rehearse_or_error(config_path, workdir, cores, device) -> Rehearsal | Exception:
    try:
        return rehearse(config_path, workdir, cores, device)
    except (cfg.ConfigError, RehearsalError) as error:
        return error


def main(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="advprune rehearse", description=__doc__.split("\n\n")[0])
    p.add_argument("configs", nargs="+", help="paper configurations, e.g. config/paper/*.yaml")
    p.add_argument("--workdir", default="rehearsal", help="scratch directory; one subdirectory per config (default: rehearsal/)")
    p.add_argument("--cores", type=int, default=2, help="cores of each rehearsal's Snakemake run")
    p.add_argument("--concurrent", type=int, default=2, help="configs rehearsed at once (default 2: one fills the other's idle cores)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (the GPU check rehearses on the GPU)")
    p.add_argument("--clean", action="store_true", help="delete a config's scratch directory first, if a rehearsal made it (default: continue it)")
    a = p.parse_args(argv)
    started = time.monotonic()
    try:
        results = rehearse_many(a.configs, a.workdir, a.cores, a.device, a.concurrent, a.clean)
    except (cfg.ConfigError, RehearsalError) as error:
        sys.exit(f"advprune rehearse: {error}")
    failed = []
    for path, result in zip(a.configs, results):
        if isinstance(result, Exception):
            failed.append(f"advprune rehearse: {result}")
            continue
        print(f"{path}: rehearsed in {result.seconds:.0f} s ({result.cpu_seconds:.0f} CPU s, {result.jobs} jobs in {result.invocations} "
              f"Snakemake runs), report in {result.workdir / 'results/report'}", flush=True)
    if len(a.configs) > 1:
        print(f"all {len(a.configs)} configs: {time.monotonic() - started:.0f} s wall, {a.concurrent} at a time")
    if failed:
        sys.exit("\n".join(failed))
