"""Wall time of the default pipeline (config/config.yaml) from scratch, in a fresh directory.

Prints the total against the target (30 minutes on 2 cores) and where the time went per rule, from the
rules' own benchmark files, so a regression shows which stage caused it.
"""

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 1800  # issue 17: the default (2 seeds, every claim's arms) within 30 minutes on 2 cores


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cores", default="2")
    p.add_argument("--configfile", default=str(REPO / "config/config.yaml"))
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    a = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="advprune-bench-"))
    snakemake = Path(sys.executable).parent / "snakemake"
    start = time.perf_counter()
    subprocess.run([str(snakemake), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--configfile", a.configfile, "--cores", a.cores, "--quiet"], check=True)
    total = time.perf_counter() - start

    per_rule = defaultdict(lambda: [0, 0.0])
    for tsv in (workdir / "results/benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(workdir / "results/benchmarks").parts[0].removesuffix(".tsv")
        with open(tsv) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        per_rule[rule][0] += 1
        per_rule[rule][1] += float(row["s"])
    print(f"default pipeline: {total:.0f} s wall on {a.cores} cores; target {TARGET_S} s; ratio target/actual {TARGET_S / total:.2f}")
    for rule, (jobs, seconds) in sorted(per_rule.items(), key=lambda kv: -kv[1][1]):
        print(f"  {rule:12s} {jobs:3d} jobs  {seconds:7.1f} job-seconds")
    if a.keep:
        print(f"run directory: {workdir}")
    else:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
