"""Evaluate one model: clean, PGD and standard AutoAttack accuracy, verified (IBP / CROWN) accuracy and HO-FMN's
minimum-norm distances on the same points, sparsity, parameters, FLOPs and CPU latency against the dense network of its architecture; writes one
RobustBench-like JSON record with provenance."""

import time
from pathlib import Path

from advprune.checkpoint import build_dense, load_model, write_json
from advprune.data import data_sha256, load_meta, load_split
from advprune.entry import load_config, parser, refuse, remove_resume_state, start_job
from advprune.evaluation import model_statistics, robustness, to_bits
from advprune.identity import check_model, expected_identity
from advprune.provenance import provenance
from advprune.security.hofmn import record_fields as hofmn_fields
from advprune.verification import record_fields


def security_fields(model, split, data_dir, eps, cfg, device, per_point) -> dict:
    """HO-FMN's record fields (advprune.security), its parameters tuned on the validation split; adds the
    per-point robustness at eps to `per_point`."""
    settings = cfg["hofmn"]
    val = load_split(data_dir, "val", device) if settings else None
    fields, robust = hofmn_fields(model, split, val, eps, settings, cfg["batch_size"], cfg["fold_batchnorm"])
    if robust is not None:
        per_point["hofmn"] = to_bits(robust)
    return fields


def main(model_path, data_dir, dataset, arch, seed, method, sparsity, params, out_json, threads=1, log=None, code_hash=None, labels=None,
         expect=None, resume=None):
    """`labels`: fields recorded beside the identifiers (method implementation, a study's variant); `expect`: what
    the path and config say the model is (advprune.identity.expected_identity); `resume`: {"path", "every"} of the
    AutoAttack state a killed run continues from (removed once the record is written)."""
    started = time.time()
    device = start_job(log, threads, params["device"])
    cfg, threat = params["evaluate"], params["threat_model"]
    meta = load_meta(data_dir)
    model, ckpt = load_model(model_path, device)
    check_inputs(model_path, data_dir, meta, model, ckpt, params, expect)
    split = load_split(data_dir, cfg["split"], device, n=cfg["n_examples"])
    # the dense reference: the checkpoint's architecture at full width (only its shapes and speed matter)
    stats = model_statistics(model, (meta["channels"], *meta["image_size"]), params["include_first_last"], dense=build_dense(ckpt, device),
                             latency=cfg["latency"])
    scores = robustness(model, split, meta["n_classes"], threat["eps"], threat["norm"], cfg["pgd"], cfg["autoattack"], cfg["batch_size"],
                        cfg["fold_batchnorm"], resume, code_hash)
    # certificates on the same points and the same (folded) network as the attacks; null + a log line when off/unsupported
    verified, certified = record_fields(model, split.float_x(), split.y, threat["eps"], cfg["verify"], cfg["fold_batchnorm"])
    if certified is not None:
        scores["per_point"]["verified"] = to_bits(certified)
    security = security_fields(model, split, data_dir, threat["eps"], cfg, device, scores["per_point"])
    record = {
        "dataset": dataset, "arch": arch, "seed": seed, "method": method, "sparsity_target": float(sparsity), **(labels or {}),
        "structured": bool(ckpt.get("structured", False)),
        "threat_model": {"norm": threat["norm"], "eps": threat["eps"]}, "split": cfg["split"], "data_sha256": data_sha256(meta),
        **scores, **verified, **security, **stats,
        **model_report(ckpt["meta"]),
        "external": ckpt["meta"].get("external"),  # a checkpoint made elsewhere (config key `external`): its layout, file and source
        "wall_time_s": time.time() - started,
        "provenance": provenance(params, seed, device, code_hash),
        "model_provenance": ckpt["meta"].get("provenance"),
    }
    write_json(record, out_json)
    if resume is not None:
        remove_resume_state(resume["path"])


def model_report(meta: dict) -> dict:
    """What made the model, from its checkpoint: the method's taxonomy and convergence report, and the budget of
    its pruning phases and fine-tuning (what a comparison checks its arms for)."""
    prune = meta.get("prune", {})
    return {"taxonomy": prune.get("taxonomy"), "convergence": prune.get("convergence"),
            "budget": {"prune": prune.get("budget"), "finetune": meta.get("finetune")}}


def check_inputs(model_path, data_dir, meta, model, ckpt, params, expect):
    """Before any work: the split holds evaluate.n_examples (else a record would silently be of fewer points, and
    the same config refused at the next run), and the checkpoint is the model its path and config name
    (`expect`; None: only its data is compared)."""
    cfg = params["evaluate"]
    n, size = cfg["n_examples"], meta["splits"][cfg["split"]]
    if n is not None and n > size:
        refuse(f"config key 'evaluate.n_examples': {n} is more than the {size} examples in the {cfg['split']} split of {meta['name']} "
               f"({Path(data_dir) / 'meta.json'}; null takes the whole split)")
    check_model(model_path, model, ckpt, expect, meta)


def cli(argv=None):
    from advprune.entry import existing_file, fraction, schema_arg

    p = parser(__doc__)
    p.add_argument("--dataset", required=True, type=schema_arg("datasets", 0))
    p.add_argument("--arch", required=True, type=schema_arg("archs", 0))
    p.add_argument("--model", required=True, type=existing_file, help="checkpoint to evaluate")
    p.add_argument("--method", default="dense")
    p.add_argument("--sparsity", type=fraction, default=0.0)
    p.add_argument("--seed", type=schema_arg("seeds", 0), default=0)
    p.add_argument("--out", required=True, help="JSON record")
    p.add_argument("--resume", help="AutoAttack state file, kept outside the outputs: a killed run continues from it")
    a = p.parse_args(argv)
    from advprune.config import evaluate_params, fetch_params

    config = load_config(a.config, None if a.method == "dense" else a.method)
    resume = {"path": a.resume, "every": config["evaluate"]["autoattack"]["state_every"]} if a.resume else None
    main(a.model, fetch_params(config, a.dataset)["out_dir"], a.dataset, a.arch, a.seed, a.method, a.sparsity, evaluate_params(config), a.out,
         a.threads, a.log, expect=expected_identity(config, a.arch, a.method, a.sparsity), resume=resume)


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        w = sm.wildcards
        method, sparsity = w.get("method", "dense"), float(w.get("sparsity", 0))
        main(sm.input.model, sm.params.data_dir, w.dataset, w.arch, int(w.seed), method, sparsity, sm.params.settings,
             sm.output[0], sm.threads, sm.log[0], sm.params.code, sm.params.labels, expect=expected_identity(sm.config, w.arch, method, sparsity),
             resume=sm.params.resume)
    else:
        cli()
