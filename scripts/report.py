"""Turn the aggregated tables into the report's figures and tables."""

from pathlib import Path

from advprune.entry import read_csv
from advprune.report import make_report
from advprune.runtime import setup_logging
from advprune.staleness import SOURCES, record_sources


def main(tables_dir, out_dir, formats, dpi, log=None):
    setup_logging(log)
    tables = sorted(Path(tables_dir).glob("*.csv"))
    for table in tables:  # a damaged table is named before pandas fails on it
        read_csv(table)
    make_report(tables_dir, out_dir, formats=tuple(formats), dpi=int(dpi))
    record_sources(tables, Path(out_dir) / SOURCES)


def cli(argv=None):
    from advprune.entry import ArgumentParser, schema_arg

    parser = ArgumentParser(description=__doc__)
    parser.add_argument("--tables-dir", required=True, help="directory with the CSV tables written by `aggregate`")
    parser.add_argument("--out-dir", required=True, help="report directory; figures/ and tables/ go below it")
    parser.add_argument("--formats", nargs="+", type=schema_arg("report", "formats", 0), default=["png", "pdf"], help="figure formats (default: png pdf)")
    parser.add_argument("--dpi", type=schema_arg("report", "dpi"), default=150, help="resolution of raster figures (default: 150)")
    parser.add_argument("--log", default=None, help="also log to this file")
    args = parser.parse_args(argv)
    main(args.tables_dir, args.out_dir, args.formats, args.dpi, log=args.log)


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        main(sm.params.tables_dir, sm.params.out_dir, sm.params.formats, sm.params.dpi, log=sm.log[0])
    else:
        cli()
