"""Per-module robustness sensitivity of a pretrained model (formula in advprune/sensitivity.py)."""

from advprune.attacks import PGD
from advprune.checkpoint import load_model
from advprune.data import load_meta, load_split
from advprune.entry import existing_file, load_config, parser, schema_arg, start_job, write_csv
from advprune.identity import check_model, expected_identity
from advprune.runtime import seed_everything
from advprune.sensitivity import module_sensitivity


def main(model_path, data_dir, seed, params, out_csv, threads=1, log=None, expect=None):
    """`expect`: what the path and config say the pretrained model is (advprune.identity.expected_identity)."""
    device = start_job(log, threads, params["device"])
    cfg = params["sensitivity"]
    model, ckpt = load_model(model_path, device)
    check_model(model_path, model, ckpt, expect, load_meta(data_dir))
    split = load_split(data_dir, "val", device, n=cfg["n_examples"])
    seed_everything(seed)
    attack = PGD(params["threat_model"]["eps"], cfg["attack"]["step_size"], cfg["attack"]["steps"], cfg["attack"].get("random_start", True))
    rows = module_sensitivity(model, split.float_x(), split.y, attack, cfg["rho"], cfg["ascent_steps"], params["include_first_last"])
    write_csv(rows, out_csv)


def cli(argv=None):
    p = parser(__doc__)
    p.add_argument("--dataset", required=True, type=schema_arg("datasets", 0))
    p.add_argument("--model", required=True, type=existing_file, help="pretrained checkpoint")
    p.add_argument("--seed", type=schema_arg("seeds", 0), default=0)
    p.add_argument("--out", required=True, help="CSV, one row per module")
    a = p.parse_args(argv)
    from advprune.config import fetch_params, sensitivity_params

    config = load_config(a.config)
    main(a.model, fetch_params(config, a.dataset)["out_dir"], a.seed, sensitivity_params(config), a.out, a.threads, a.log)


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        main(sm.input.model, sm.params.data_dir, int(sm.wildcards.seed), sm.params.settings, sm.output[0], sm.threads, sm.log[0],
             expect=expected_identity(sm.config, sm.wildcards.arch, "dense", 0))
    else:
        cli()
