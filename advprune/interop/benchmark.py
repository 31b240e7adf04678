"""The Adversarial Pruning benchmark (Piras et al. 2024), read from pralab/AdversarialPruningBenchmark at COMMIT:
its protocol, its base models, its model keys, its taxonomy entry and the per-model fields of a submission.

- Protocol (utils/test.py): standard AutoAttack, L-inf eps 0.031 on `x_test[:10000]` of the official test split
  (all of CIFAR-10's; SVHN's first 10,000 of 26,032), batch 500, inputs in [0, 1] (`ToTensor()` only: a model
  that needs normalisation carries it). HO-FMN's robust accuracy is the share of L-inf distances above 8/255
  (not 0.031), on 128 points after the 2,048 it tunes on.
- Base models (models/base_resnet18.py, base_vgg16.py): kuangliu's ResNet-18 and HYDRA's VGG-16-bn, width 64,
  3 input channels, 10 classes, 32x32 inputs. A submitted checkpoint is `{'state_dict': ...}` (or `'net'`) that
  loads with `strict=True` into one of them; masks are folded into the dense weights. The benchmark loads
  structured models (HARP's channels, PwoA's filters) into the same dense base models, so a physically
  smaller network of ours is exported at the dense shapes with its removed channels exactly zero.
- Keys (utils/utils.py model_key_maker): `<ap_key>_<R18|V16>_<CIFAR10|SVHN>_<US|S>_<sparsity %>`, with
  US at 90/95/99 % and S at 50/75/90 %.
- Taxonomy (taxonomy/taxonomy.json): the A-type entry (methods pruning after training, all of ours).

Differences kept: `dense_state` puts a structured model's remaining channels first in each layer (which
channels were removed is not recorded, and in a dense network with the others exactly zero the order does not
change the function); the per-model accuracies are in percent with two decimals, as the submission template
asks, and the benchmark's loader (which swallows a missing key and evaluates random weights) is never ours.
"""

from __future__ import annotations

import math

import torch

from advprune.interop.naming import to_field
from advprune.interop.papers import Paper

REPO = "pralab/AdversarialPruningBenchmark"
COMMIT = "0ae46e7b0ed3ae41c1bd1dc439cc014bb5cd2826"  # 2024-09-05, "fixed loading"
EPS = 0.031
N_EXAMPLES = 10_000
BATCH_SIZE = 500
HOFMN_EPS = 8 / 255
ARCH_CODES = {"resnet18": "R18", "vgg16_bn": "V16"}
BASE_MODELS = {"resnet18": "base_resnet18", "vgg16_bn": "base_vgg16"}
DATASETS = {"cifar10": "CIFAR10", "svhn": "SVHN"}
BASE_SHAPE = {"width": 64, "in_channels": 3, "n_classes": 10, "image_size": [32, 32]}
LEVELS = {"US": (90, 95, 99), "S": (50, 75, 90)}

OBJECTIVES = {"pgd_at": "Adversarial Training (AT) PGD", "trades": "Adversarial Training (AT) TRADES", "mart": "Adversarial Training (AT) MART",
              "natural": "Natural Training (NT)", "ibp": "Certified Training (IBP)", "crown_ibp": "Certified Training (CROWN-IBP)",
              "pwoa": "Knowledge Distillation (KD)"}
STRUCTURES = {"US": "Unstructured (US)", "S": "Structured (S) filters"}
LOCALITIES = {"L": "Local Pruning (L)", "G": "Global Pruning (G)"}
CRITERIA = {"LWM": "Lowest Weight Magnitude LWM", "SOLWM": "Solver Based LWM (SOLWM)", "LIS": "Least Importance Score (LIS)",
            "HGM": "Highest Gradient Magnitude (HGM)", "random": "Random"}


def percent_label(sparsity: float) -> str:
    """Sparsity as the keys write it: '90', '99', '99.5'."""
    return format(round(100 * sparsity, 6), "g")


def model_key(paper: Paper, arch: str, dataset: str, structure: str, sparsity: float) -> str | None:
    """The benchmark's key of a model; None for an architecture it has no base model for. A dataset outside the
    benchmark's keeps its own name (the key then only names the files; `checkpoint_issues` says why)."""
    if arch not in ARCH_CODES:
        return None
    return f"{paper.ap_key}_{ARCH_CODES[arch]}_{DATASETS.get(dataset, dataset.upper())}_{structure}_{percent_label(sparsity)}"


def _pad(small: torch.Tensor, dense: torch.Tensor, key: str) -> torch.Tensor:
    """`small` in the top-left corner of a tensor of `dense`'s shape, the rest exactly zero (a BatchNorm's running
    variance one, so that the removed channel's statistics stay finite)."""
    if small.shape == dense.shape:
        return small
    if small.dim() != dense.dim() or any(s > d for s, d in zip(small.shape, dense.shape)):
        raise ValueError(f"{key}: saved shape {tuple(small.shape)} does not fit the dense architecture's {tuple(dense.shape)}")
    out = torch.ones_like(dense) if key.endswith("running_var") else torch.zeros_like(dense)
    out[tuple(slice(0, n) for n in small.shape)] = small
    return out


def dense_state(model: torch.nn.Module, ckpt: dict) -> dict[str, torch.Tensor]:
    """The model's tensors (our names) with its masks folded in and, for a structured model, at the dense
    architecture's shapes: its channels first, the removed ones zero in every layer that writes or reads them, and
    their BatchNorm weight and bias zero, so that they output exactly 0 and the network computes what the smaller
    one computes."""
    from advprune.checkpoint import build_dense

    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    for name, mask in (ckpt.get("masks") or {}).items():
        state[name] = state[name] * mask.to(state[name].dtype)
    if ckpt.get("structured"):
        dense = build_dense(ckpt).state_dict()
        if set(dense) != set(state):
            raise ValueError(f"a structured checkpoint whose tensors are not the dense architecture's: {sorted(set(dense) ^ set(state))[:3]}")
        state = {k: _pad(state[k], dense[k], k) for k in dense}
    return state


def checkpoint(model: torch.nn.Module, ckpt: dict) -> dict:
    """What the benchmark loads: {'state_dict': the dense state in the base model's names}; NamingError for an
    architecture it has no base model for."""
    from advprune.checkpoint import build_dense

    return {"state_dict": to_field(dense_state(model, ckpt), build_dense(ckpt), ckpt["arch"])}


def checkpoint_issues(ckpt: dict, dataset: str, structure: str, sparsity: float) -> list[str]:
    """Why the benchmark's base models or leaderboard cannot take this checkpoint as it is (empty: they can)."""
    if ckpt["arch"] not in ARCH_CODES:
        return [f"{ckpt['arch']} has no base model in the benchmark (base_resnet18, base_vgg16)"]
    issues = []
    found = {"width": ckpt["model_options"].get("width", BASE_SHAPE["width"]), "in_channels": ckpt["in_channels"], "n_classes": ckpt["n_classes"],
             "image_size": list(ckpt["image_size"])}
    issues += [f"{k} {found[k]} (the base model's: {v})" for k, v in BASE_SHAPE.items() if found[k] != v]
    if dataset not in DATASETS:
        issues.append(f"dataset {dataset} (the benchmark's: {', '.join(DATASETS)})")
    if round(100 * sparsity, 6) not in LEVELS[structure]:
        issues.append(f"sparsity {percent_label(sparsity)} % ({structure} levels: {'/'.join(map(str, LEVELS[structure]))} %)")
    return issues


def protocol_issues(record: dict) -> list[str]:
    """Where the record's evaluation differs from the benchmark's (empty: its numbers stand beside the
    leaderboard's)."""
    issues = []
    if not math.isclose(record["threat_model"]["eps"], EPS, rel_tol=0, abs_tol=1e-9):
        issues.append(f"eps {record['threat_model']['eps']:.6g} (the benchmark's: {EPS})")
    if record.get("split") != "test":
        issues.append(f"the {record.get('split')} split (the benchmark's: test)")
    if record["n_examples"] != N_EXAMPLES:
        issues.append(f"{record['n_examples']} points (the benchmark's: the first {N_EXAMPLES} of the test split)")
    if record.get("autoattack_version") != "standard":
        issues.append(f"AutoAttack version {record.get('autoattack_version')} (the benchmark's: standard)")
    return issues


def hofmn_accuracy(distances: list | None) -> float | None:
    """The benchmark's HO-FMN robust accuracy from per-point L-inf distances: the share above 8/255 (null = no
    adversarial example found: robust at every eps)."""
    if not distances:
        return None
    return sum(d is None or d > HOFMN_EPS for d in distances) / len(distances)


def _training(objectives: list[str]) -> str:
    return " + ".join(OBJECTIVES.get(o, o) for o in dict.fromkeys(objectives)) or "None"


def taxonomy_entry(paper: Paper, record: dict, pretraining: str) -> dict:
    """The benchmark's taxonomy entry (an A-type method: pruning after training), with the keys of
    taxonomy/taxonomy.json, filled from the record: structure, locality, criterion and schedule from the method's
    taxonomy, fine-tuning from the training the model had after pruning (its fine-tuning, or, when that had no
    epochs, the method's own training phases: PwoA's distillation)."""
    taxonomy, budget = record["taxonomy"], record.get("budget") or {}
    finetune = budget.get("finetune") or {}
    objectives = [finetune["settings"]["objective"]] if (finetune.get("budget") or {}).get("epochs") else []
    if not objectives:
        objectives = [phase["objective"] for phase in (budget.get("prune") or {}).values()]
    structure = STRUCTURES[taxonomy["structure"]]
    if taxonomy["structure"] == "S" and record.get("impl") == "harp":
        structure = "Structured (S) channels"
    return {
        "link_to_paper": paper.link,
        "ap_key": paper.ap_key,
        "Type of Pipeline:": "A-Methods Pruning After Training",
        "A: Pretraining ": pretraining,
        "A: Finetuning": _training(objectives),
        "A: OneShot (1S) vs Iterative (IT)": taxonomy["schedule"],
        "Pruning structure": structure,
        "Pruning locality": LOCALITIES[taxonomy["locality"]],
        "Pruning criterion": CRITERIA.get(taxonomy["criterion"], taxonomy["criterion"]),
    }


def pretraining_text(pretrain: dict) -> str:
    """The taxonomy's pretraining field from the run's pretraining settings (objective, or the checkpoint it
    started from)."""
    start = pretrain.get("start")
    if start is None:
        return OBJECTIVES.get(pretrain["objective"], pretrain["objective"])
    if "robustbench" in start:
        return f"RobustBench model {start['robustbench']['model']} ({start['robustbench']['dataset']}, {start['robustbench']['threat_model']})"
    return f"checkpoint {start['path']}"


def submission_fields(record: dict) -> dict:
    """The per-model fields of a submission (the benchmark's issue template): clean, AutoAttack and HO-FMN
    accuracy in percent, whether the model needs input normalisation (ours never do: inputs in [0, 1])."""
    pct = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731
    return {"clean_acc": pct(record.get("clean_acc")), "autoattack_acc": pct(record.get("autoattack_acc")),
            "hofmn_acc": pct(hofmn_accuracy(record.get("hofmn_distances"))), "hofmn_points": len(record.get("hofmn_distances") or []) or None,
            "normalization": False}
