"""Adversarially fine-tune one pruned model with its mask fixed (pruned weights stay exactly zero)."""

from advprune.checkpoint import load_model, save_model
from advprune.data import load_meta, load_split
from advprune.data.augment import Augmentation
from advprune.entry import add_training_outputs, existing_file, load_config, parser, remove_resume_state, schema_arg, start_job, write_csv
from advprune.identity import check_model, expected_identity
from advprune.provenance import provenance
from advprune.training import curve_budget, from_params, train


def main(model_path, data_dir, seed, params, out_model, out_curve, resume_path, threads=1, log=None, code_hash=None, expect=None):
    """`expect`: what the path and config say the pruned model is (advprune.identity.expected_identity)."""
    device = start_job(log, threads, params["device"])
    model, ckpt = load_model(model_path, device)
    data_meta = load_meta(data_dir)
    check_model(model_path, model, ckpt, expect, data_meta)
    masks = {k: v.to(device) for k, v in (ckpt["masks"] or {}).items()}
    objective, settings, val_attack = from_params(params["train"], params["threat_model"]["eps"])
    curve = train(model, objective, load_split(data_dir, "train", device, augmentation=Augmentation.from_params(params["train"]["augmentation"])),
                  load_split(data_dir, "val", device), settings, seed, resume_path, val_attack,
                  masks=masks, fingerprint_extra={"params": params, "source": ckpt["meta"], "code": code_hash}, desc="finetune", fast_path=params["fast_path"])
    write_csv(curve, out_curve, header=["epoch"])  # a header even when there are no epochs (fine-tuning mode none)
    save_model(out_model, model, ckpt["arch"], ckpt["model_options"], data_meta, masks=ckpt["masks"],
               meta={**ckpt["meta"], "provenance": provenance(params, seed, device, code_hash), "final": curve[-1] if curve else {},
                     "finetune": {"settings": {k: v for k, v in params["train"].items() if k != "augmentation"}, "budget": curve_budget(curve)}},
               pruning=ckpt.get("pruning"))
    remove_resume_state(resume_path)


def cli(argv=None):
    p = parser(__doc__)
    p.add_argument("--dataset", required=True, type=schema_arg("datasets", 0))
    p.add_argument("--model", required=True, type=existing_file, help="pruned checkpoint")
    p.add_argument("--seed", type=schema_arg("seeds", 0), default=0)
    p.add_argument("--method", default=None, help="key of prune.methods whose own fine-tuning override applies")
    p.add_argument("--mode", default=None, choices=["none", "natural", "adversarial"], help="a fine-tuning study mode (replaces the method's)")
    add_training_outputs(p)
    a = p.parse_args(argv)
    from advprune.config import fetch_params, finetune_params

    config = load_config(a.config, a.method)
    main(a.model, fetch_params(config, a.dataset)["out_dir"], a.seed, finetune_params(config, a.method, a.mode, dataset=a.dataset), a.out_model, a.out_curve,
         a.resume, a.threads, a.log)


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        w = sm.wildcards
        main(sm.input.model, sm.params.data_dir, int(w.seed), sm.params.settings, sm.output.model, sm.output.curve, sm.params.resume, sm.threads, sm.log[0],
             sm.params.code, expect=expected_identity(sm.config, w.arch, w.method, float(w.sparsity)))
    else:
        cli()
