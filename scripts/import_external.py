"""Read one checkpoint made elsewhere (config key `external`) into our architecture and save it as ours, with where
it came from: strictly loaded, scores folded, its claimed sparsity checked, dead channels removed
(advprune/interop/layouts.py). A checkpoint that does not fit is refused with one line naming the file."""

import logging

from advprune.checkpoint import save_model
from advprune.data import load_meta
from advprune.entry import load_config, parser, start_job
from advprune.interop.layouts import read_external
from advprune.provenance import provenance

logger = logging.getLogger("import_external")


def main(checkpoint, data_dir, params, out_model, threads=1, log=None, code_hash=None, name="external"):
    """`name`: the row's key in the config's `external` section (what its path names: advprune.identity)."""
    device = start_job(log, threads, "cpu")
    meta = load_meta(data_dir)
    model, info = read_external(checkpoint, params["layout"], params["arch"], params["model"], meta, params["sparsity"], params["include_first_last"],
                                params["sparsity_tolerance"], params["harp_alpha"])
    logger.info("%s (%s layout): scores folded: %s; sparsity %.4f measured, %g claimed; %d dead channels removed", checkpoint, params["layout"],
                info["scores_folded"] or "none", info["sparsity_measured"], params["sparsity"], info["channels_removed"])
    external = {**info, "path": str(checkpoint), "source": params["source"]}
    save_model(out_model, model, params["arch"], params["model"], meta,
               meta={"external": external, "sparsity_target": params["sparsity"], "provenance": provenance(params, 0, device, code_hash)},
               pruning={"method": name, "impl": "external", "sparsity_target": float(params["sparsity"]), "sparsity_measured": info["sparsity_measured"]})


def cli(argv=None):
    p = parser(__doc__)
    p.add_argument("--name", required=True, help="key of the config's `external` section")
    p.add_argument("--out-model", required=True, help="checkpoint to write")
    a = p.parse_args(argv)
    from advprune.config import external_params, fetch_params

    config = load_config(a.config)
    if a.name not in config["external"]:
        p.error(f"--name {a.name!r} is not a key of external in {a.config} (known: {', '.join(config['external']) or 'none'})")
    entry = config["external"][a.name]
    main(entry["path"], fetch_params(config, entry["dataset"])["out_dir"], external_params(config, a.name), a.out_model, a.threads, a.log,
         name=a.name)


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        main(sm.input.checkpoint, sm.params.data_dir, sm.params.settings, sm.output[0], sm.threads, sm.log[0], sm.params.code, sm.wildcards.method)
    else:
        cli()
