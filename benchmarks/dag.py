"""Planning time of the paper-scale DAG: `snakemake -n` on the union of config/paper/*.yaml with three seeds.

The union: every dataset, architecture, sparsity, method entry and study of the paper configs in one config
(a method key that two configs define differently is kept once per config, suffixed with the config's name),
trained from scratch (no start checkpoints), on top of the first config's other settings. Prints the job count
and the wall time against the target (15 s on 2 cores), and with --profile where the planning time goes.

    .venv/bin/python benchmarks/dag.py [--seeds 3] [--profile]
"""

import argparse
import cProfile
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 15.0


def union_config(paths: list[Path], seeds: int) -> dict:
    from advprune.config import load_config

    configs = {path.stem: load_config(path) for path in paths}
    union = yaml.safe_load(paths[0].read_text())
    union["pretrain"].update(checkpoint=None, robustbench=None)
    for key in ("datasets", "archs"):
        union[key] = list(dict.fromkeys(v for c in configs.values() for v in c[key]))
    union["seeds"] = list(range(seeds))
    union["models"] = {arch: opts for c in configs.values() for arch, opts in c["models"].items()}
    union["prune"]["sparsities"] = sorted({s for c in configs.values() for s in c["prune"]["sparsities"]})
    methods: dict = {}
    for name, c in configs.items():
        raw = yaml.safe_load((REPO / "config/paper" / f"{name}.yaml").read_text())["prune"]["methods"]
        for key, spec in raw.items():
            spec = {**spec, "method": spec.get("method", key)}
            methods[key if methods.get(key, spec) == spec else f"{key}_{name}"] = spec
    union["prune"]["methods"] = methods
    union["studies"] = {}
    for c in configs.values():
        for study, spec in c.get("studies", {}).items():
            union["studies"].setdefault(study, spec)
    return union


def plan(configfile: Path, workdir: Path) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (on a loaded machine the better measure) and jobs of `snakemake -n`."""
    started, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
                          "--configfile", str(configfile)], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seconds = usage.ru_utime + usage.ru_stime - cpu.ru_utime - cpu.ru_stime
    if run.returncode != 0:
        sys.exit(f"snakemake -n failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    total = re.search(r"^total\s+(\d+)$", run.stdout + run.stderr, re.M)
    return seconds, cpu_seconds, int(total[1]) if total else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="also run the planning in-process under cProfile and print the top functions")
    a = p.parse_args()
    paths = sorted((REPO / "config/paper").glob("*.yaml"))
    with tempfile.TemporaryDirectory(prefix="advprune-dag-") as tmp:
        configfile = Path(tmp) / "union.yaml"
        union = union_config(paths, a.seeds)
        configfile.write_text(yaml.safe_dump(union, sort_keys=False))
        seconds, cpu_seconds, jobs = plan(configfile, Path(tmp))
        print(f"snakemake -n, union of {len(paths)} paper configs ({len(union['datasets'])} datasets x {len(union['archs'])} archs x "
              f"{len(union['prune']['methods'])} methods x {len(union['prune']['sparsities'])} sparsities x {a.seeds} seeds, studies): "
              f"{jobs} jobs planned in {seconds:.1f} s ({cpu_seconds:.1f} CPU s); "
              f"target {TARGET_S:.0f} s, ratio target/actual {TARGET_S / seconds:.2f}")
        if a.profile:
            from snakemake.cli import main as snakemake_main

            profiler = cProfile.Profile()
            profiler.enable()
            try:
                snakemake_main(["-n", "--quiet", "--snakefile", str(REPO / "Snakefile"), "--directory", tmp, "--configfile", str(configfile)])
            except SystemExit:
                pass
            profiler.disable()
            stats = pstats.Stats(profiler).sort_stats("cumulative")
            stats.print_stats(25)
            stats.print_stats(r"common\.smk|advprune|conda", 25)  # the workflow's own share (input functions, params, code hashes)


if __name__ == "__main__":
    main()
