"""Download (where needed) and prepare one dataset into the pipeline's array format."""

import logging

from advprune.data import DATASETS, prepare_dataset
from advprune.runtime import setup_logging

logger = logging.getLogger("advprune.fetch_data")  # `log` is the log-file argument below


def main(dataset, raw_dir, out_dir, val_fraction, split_seed, download, log=None):
    setup_logging(log)
    meta = prepare_dataset(dataset, raw_dir, out_dir, float(val_fraction), int(split_seed), bool(download))
    logger.info("%s ready in %s: %s", dataset, out_dir, meta["splits"])


def cli(argv=None):
    from advprune.entry import ArgumentParser, schema_arg

    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--raw-dir", required=True, help="where downloads and extracted archives live")
    parser.add_argument("--out-dir", required=True, help="where the prepared arrays and meta.json go")
    parser.add_argument("--val-fraction", type=schema_arg("data", "val_fraction"), default=0.15, help="share of train carved off as val")
    parser.add_argument("--split-seed", type=schema_arg("data", "split_seed"), default=0)
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="fail if raw files are missing instead of downloading them")
    parser.add_argument("--log", help="also log to this file")
    args = parser.parse_args(argv)
    main(args.dataset, args.raw_dir, args.out_dir, args.val_fraction, args.split_seed, args.download, log=args.log)


if __name__ == "__main__":
    if "snakemake" in globals():  # run by Snakemake's script: directive
        sm = snakemake  # noqa: F821
        main(sm.wildcards.dataset, sm.params.raw_dir, sm.params.out_dir, sm.params.val_fraction,
             sm.params.split_seed, sm.params.download, log=sm.log[0])
    else:
        cli()
