"""Adversarially pretrain one dense model per (dataset, arch, seed); resumes after a kill. With pretrain.checkpoint or
pretrain.robustbench the dense model is that checkpoint, converted to ours instead of trained."""

import logging

from advprune.checkpoint import load_start_model, save_model
from advprune.config import missing_start_checkpoint
from advprune.data import load_meta, load_split
from advprune.data.augment import Augmentation
from advprune.entry import add_training_outputs, load_config, parser, remove_resume_state, schema_arg, start_job, write_csv
from advprune.models import build_model
from advprune.provenance import provenance
from advprune.runtime import seed_everything
from advprune.training import from_params, train

logger = logging.getLogger("advprune.pretrain")


def main(data_dir, arch, seed, params, out_model, out_curve, resume_path, threads=1, log=None, code_hash=None):
    device = start_job(log, threads, params["device"])
    meta = load_meta(data_dir)
    if "start" in params:
        return start_from_checkpoint(meta, arch, seed, params, out_model, out_curve, device, code_hash)
    augmentation = Augmentation.from_params(params["train"]["augmentation"])
    train_split, val_split = load_split(data_dir, "train", device, augmentation=augmentation), load_split(data_dir, "val", device)
    seed_everything(seed)
    model = build_model(arch, meta["n_classes"], meta["channels"], meta["image_size"], **params["model"]).to(device)
    objective, settings, val_attack = from_params(params["train"], params["threat_model"]["eps"])
    curve = train(model, objective, train_split, val_split, settings, seed, resume_path, val_attack, fingerprint_extra={"params": params, "arch": arch, "code": code_hash}, desc=f"pretrain {arch}", fast_path=params["fast_path"])
    write_csv(curve, out_curve, header=["epoch"])
    save_model(out_model, model, arch, params["model"], meta, meta={"provenance": provenance(params, seed, device, code_hash), "final": curve[-1] if curve else {}})
    remove_resume_state(resume_path)


def start_from_checkpoint(meta, arch, seed, params, out_model, out_curve, device, code_hash):
    """The dense model is an existing one (pretrain.checkpoint / pretrain.robustbench): converted, not trained.
    The curve file has its header and no epochs, as after a fine-tuning of zero epochs."""
    start = params["start"]
    missing = missing_start_checkpoint(start)
    if missing:
        raise SystemExit(f"advprune: {missing}")
    model, source = load_start_model(start["path"], arch, params["model"], meta, device)
    logger.info("pretrain %s: started from %s (%s, sha256 %s), not trained", arch, start["path"], source["format"], source["sha256"][:12])
    write_csv([], out_curve, header=["epoch"])
    save_model(out_model, model, arch, params["model"], meta, meta={"provenance": provenance(params, seed, device, code_hash), "final": {},
                                                                  "start": {**start, **source}})


def cli(argv=None):
    p = parser(__doc__)
    p.add_argument("--dataset", required=True, type=schema_arg("datasets", 0))
    p.add_argument("--arch", required=True, type=schema_arg("archs", 0))
    p.add_argument("--seed", type=schema_arg("seeds", 0), default=0)
    add_training_outputs(p)
    a = p.parse_args(argv)
    from advprune.config import fetch_params, pretrain_params

    config = load_config(a.config)
    main(fetch_params(config, a.dataset)["out_dir"], a.arch, a.seed, pretrain_params(config, a.arch, dataset=a.dataset), a.out_model, a.out_curve, a.resume,
         a.threads, a.log)


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        main(sm.params.data_dir, sm.wildcards.arch, int(sm.wildcards.seed), sm.params.settings, sm.output.model, sm.output.curve, sm.params.resume, sm.threads, sm.log[0], sm.params.code)
    else:
        cli()
