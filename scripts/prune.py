"""Prune one pretrained model with one method to one target sparsity (one job per method x sparsity)."""

from advprune.checkpoint import build_dense, load_model, save_model, write_json
from advprune.data import load_meta, load_split
from advprune.data.augment import Augmentation
from advprune.entry import existing_file, load_config, parser, read_csv, remove_resume_state, schema_arg, start_job
from advprune.identity import check_model, dense_identity, expected_identity
from advprune.models.weights import layer_sparsity
from advprune.provenance import provenance
from advprune.pruning import PruneContext, build_method
from advprune.runtime import seed_everything
from advprune.training import apply_masks


def main(model_path, data_dir, sparsity, seed, params, out_model, out_info, sensitivity_csv=None, threads=1, log=None, code_hash=None,
         resume_prefix=None, expect=None):
    """`expect`: what the output's path and config say it is (advprune.identity.expected_identity); the input
    must be the dense model of the same network and data."""
    device = start_job(log, threads, params["device"])
    model, ckpt = load_model(model_path, device)
    data_meta = load_meta(data_dir)
    check_model(model_path, model, ckpt, None if expect is None else dense_identity(expect), data_meta)
    options = dict(params["method"])
    method = build_method(options.pop("method"), **options)
    context = PruneContext(
        train=load_split(data_dir, "train", device, augmentation=Augmentation.from_params(params["objective"]["augmentation"])),
        val=load_split(data_dir, "val", device),
        threat_model=params["threat_model"],
        objective=params["objective"],
        sensitivity=_read_sensitivity(sensitivity_csv) if sensitivity_csv else None,
        include_first_last=params["include_first_last"],
        seed=seed,
        device=device,
        fast_path=params["fast_path"],
        resume_prefix=resume_prefix,
        fingerprint={"params": params, "sparsity": float(sparsity), "source": ckpt["meta"], "code": code_hash},
    )
    seed_everything(seed)
    result = method.prune(model, float(sparsity), context)
    if result.model is not None:
        model = result.model
    apply_masks(model, result.masks)
    # A structured method's network is smaller: sparsity is what is left of the dense architecture's layers.
    layers = layer_sparsity(model, params["include_first_last"], build_dense(ckpt, device) if method.structured else None)
    measured = sum(r["sparsity"] * r["n_params"] for r in layers) / sum(r["n_params"] for r in layers)
    impl = params["method"]["method"]
    pruning = {"method": impl if expect is None else expect["method"], "impl": impl, "sparsity_target": float(sparsity),
               "sparsity_measured": measured}
    # what the method is, whether it ran its course and what it spent: carried to the records, where comparisons check them
    report = {"taxonomy": method.taxonomy(), "convergence": convergence(result.info.pop("convergence", None), context.budget), "budget": context.budget}
    save_model(out_model, model, ckpt["arch"], ckpt["model_options"], data_meta, masks=result.masks,
               meta={"provenance": provenance(params, seed, device, code_hash), "sparsity_target": float(sparsity), "prune": report}, pruning=pruning)
    write_json({"method": params["method"], "sparsity_target": float(sparsity), "sparsity_measured": measured, **report, "layers": layers,
                "info": result.info}, out_info)
    for path in context.resume_states():
        remove_resume_state(path)


def convergence(reported: dict | None, budget: dict) -> dict:
    """The method's convergence report ({"converged", "summary", "checks"}); a method without a training phase has
    no schedule to run through, one that trains but reports nothing is marked unknown (converged null)."""
    if reported is not None:
        return reported
    if not budget:
        return {"converged": True, "summary": "one-shot: no training schedule", "checks": {}}
    return {"converged": None, "summary": "the method reports no convergence check", "checks": {}}


def _read_sensitivity(path):
    import pandas as pd

    rows = read_csv(path, ("module", "sensitivity"), numbers=("sensitivity",))
    return pd.DataFrame(rows or {"module": [], "sensitivity": []})  # mrpf reads both columns and converts each value


def cli(argv=None):
    p = parser(__doc__)
    p.add_argument("--dataset", required=True, type=schema_arg("datasets", 0))
    p.add_argument("--model", required=True, type=existing_file, help="pretrained checkpoint")
    p.add_argument("--method", required=True, help="a key of prune.methods in the config")
    p.add_argument("--sparsity", type=schema_arg("prune", "sparsities", 0), required=True)
    p.add_argument("--seed", type=schema_arg("seeds", 0), default=0)
    p.add_argument("--sensitivity", default=None, type=existing_file, help="sensitivity CSV, for methods that use it")
    p.add_argument("--out-model", required=True)
    p.add_argument("--out-info", required=True)
    p.add_argument("--resume-prefix", default=None, help="resume states of the method's training phases: PREFIX.<phase>.state.pt")
    a = p.parse_args(argv)
    from advprune.config import fetch_params, prune_params

    config = load_config(a.config, a.method)
    main(a.model, fetch_params(config, a.dataset)["out_dir"], a.sparsity, a.seed, prune_params(config, a.method, dataset=a.dataset), a.out_model, a.out_info,
         a.sensitivity, a.threads, a.log,
         resume_prefix=a.resume_prefix, expect=expected_identity(config, None, a.method, a.sparsity))


if __name__ == "__main__":
    if "snakemake" in globals():
        sm = snakemake  # noqa: F821
        w = sm.wildcards
        main(sm.input.model, sm.params.data_dir, float(w.sparsity), int(w.seed), sm.params.settings, sm.output.model, sm.output.info,
             sm.input.get("sensitivity"), sm.threads, sm.log[0], sm.params.code,
             sm.params.resume_prefix, expect=expected_identity(sm.config, w.arch, w.method, float(w.sparsity)))
    else:
        cli()
