"""Write the Adversarial Pruning benchmark's and RobustBench's submission files of every pruned model of the run
(advprune/interop/export.py). As a plain command: `advprune export`."""

from advprune.interop.export import export_run
from advprune.runtime import setup_logging


def main(items, settings, out_dir, log=None):
    setup_logging(log)
    export_run(items, out_dir, settings)


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        main(sm.params.models, sm.params.settings, sm.output[0], sm.log[0])
    else:
        from advprune.interop.export import main as cli

        cli()
