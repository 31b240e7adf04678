"""RobustBench's leaderboard entry of a model: `model_info/<dataset>/<threat_model>/<name>.json`, with the fields
of RobustBench/robustbench's model_info files (e.g. model_info/cifar10/Linf/Sehwag2020Hydra.json, the pruned HYDRA
model it lists): link, name (the paper's title), authors, additional_data, number_forward_passes, dataset, venue,
architecture, eps ("8/255"), clean_acc and autoattack_acc (percent, two decimals, as strings), reported (the
paper's own robust accuracy: null here, we do not know what the paper reported for this model), footnote,
unreliable.

RobustBench's Linf leaderboards evaluate standard AutoAttack on the first 10,000 test points at eps 8/255
(CIFAR-10/100) or 4/255 (ImageNet); `issues` says where a record was measured otherwise.
"""

from __future__ import annotations

import math

from advprune.interop.benchmark import percent_label
from advprune.interop.papers import Paper

LEADERBOARDS = {"cifar10": 8 / 255, "cifar100": 8 / 255, "imagenet": 4 / 255}  # Linf
N_EXAMPLES = 10_000
ARCHITECTURES = {"resnet18": ("ResNet-18", "RN18"), "vgg16_bn": ("VGG-16-bn", "VGG16"), "wrn_28_4": ("WideResNet-28-4", "WRN28_4"),
                 "wrn_34_10": ("WideResNet-34-10", "WRN34_10"), "small_cnn": ("small CNN", "CNN"), "mobilevit_xxs": ("MobileViT-XXS", "MViTXXS"),
                 "mobilevit_xs": ("MobileViT-XS", "MViTXS"), "mobilevit_s": ("MobileViT-S", "MViTS")}


def _eps_text(eps: float) -> str:
    for n in (2, 4, 8, 16):
        if math.isclose(eps, n / 255, rel_tol=0, abs_tol=1e-9):
            return f"{n}/255"
    return format(eps, "g")


def model_name(paper: Paper, arch: str, structure: str, sparsity: float) -> str:
    """`<Author><Year><Word>_<arch>_<US|S><sparsity>`: the paper's RobustBench stem, told apart per model."""
    return f"{paper.robustbench}_{ARCHITECTURES.get(arch, (arch, arch))[1]}_{structure}{percent_label(sparsity)}"


def model_info(paper: Paper, record: dict, impl: str, width: int | None) -> dict:
    """The entry of the model `record` describes (`width`: its architecture's width option, if it has one)."""
    name = ARCHITECTURES.get(record["arch"], (record["arch"],))[0]
    structure = "structured" if record["taxonomy"]["structure"] == "S" else "unstructured"
    return {
        "link": paper.link,
        "name": paper.title,
        "authors": paper.authors,
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": record["dataset"],
        "venue": paper.venue,
        "architecture": name if width is None else f"{name} (width {width})",
        "eps": _eps_text(record["threat_model"]["eps"]),
        "clean_acc": f"{100 * record['clean_acc']:.2f}",
        "reported": None,
        "footnote": f"Compressed model ({percent_label(record['sparsity_target'])} % {structure} sparsity; {impl} reproduced with advprune)",
        "autoattack_acc": f"{100 * record['autoattack_acc']:.2f}",
        "unreliable": False,
    }


def issues(record: dict) -> list[str]:
    """Where the record's evaluation differs from RobustBench's Linf leaderboards (empty: it could be listed)."""
    eps = LEADERBOARDS.get(record["dataset"])
    if eps is None:
        return [f"RobustBench has no Linf leaderboard for {record['dataset']} (it has {', '.join(LEADERBOARDS)})"]
    found = []
    if not math.isclose(record["threat_model"]["eps"], eps, rel_tol=0, abs_tol=1e-9):
        found.append(f"eps {_eps_text(record['threat_model']['eps'])} (RobustBench's: {_eps_text(eps)})")
    if record.get("split") != "test" or record["n_examples"] != N_EXAMPLES:
        found.append(f"{record['n_examples']} points of the {record.get('split')} split (RobustBench's: the first {N_EXAMPLES} test points)")
    if record.get("autoattack_version") != "standard":
        found.append(f"AutoAttack version {record.get('autoattack_version')} (RobustBench's: standard)")
    return found
