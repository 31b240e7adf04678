"""The report rule: figures and tables from synthetic aggregated tables."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import matplotlib.image
from matplotlib.container import BarContainer, ErrorbarContainer
import numpy as np
import pandas as pd
import pytest

from advprune.report import FIGURES, TABLES, expected_outputs, make_report
from advprune.report import figures, findings
from advprune.report.style import DENSE_COLOR, FALLBACK_COLORS, KNOWN_COLORS, method_color, method_colors
from advprune.report.tables import (
    BUILDERS,
    INPUT_COLUMNS,
    finetune_study_table,
    latency_display,
    latency_table,
    objective_study_display,
    objective_study_table,
    read_table,
    robustness_table,
    tex_escape,
    to_latex,
    to_markdown,
)

from conftest import REPO, load_script

METHODS = ("lwm", "lwm_global", "random")  # unstructured: zeros in place, no speed-up
STRUCTURED = ("l1_filter", "mrpf")  # physically smaller models with a CPU latency
IMPL = {"lwm_global": "lwm"}  # config key -> implementation, where they differ
SPARSITIES = (0.5, 0.9, 0.99)
SEEDS = (0, 1)
ARCH_LAYERS = {
    "small_cnn": ["conv1", "conv2", "conv3", "fc"],
    "resnet18": ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)]
    + ["layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut", "fc"],
}
FLOPS = 1_000_000
PARAMS = 100_000
NEW_SUMMARY_COLUMNS = ["impl", "structured", "latency_ms", "latency_dense_ms"]
DROP = {"dense": 0.0, "lwm": 0.2, "lwm_global": 0.15, "random": 0.6, "hydra": 0.1, "l1_filter": 0.3, "mrpf": 0.25}


def _accuracy(method: str, sparsity: float, seed: int, arch: str) -> tuple[float, float, float]:
    """Clean / PGD / AA accuracy with a known value for small_cnn, lwm, 90 %: clean 0.80 and 0.84 over the seeds."""
    clean = 0.92 - DROP[method] * sparsity**3 + 0.02 * seed - (0.05 if arch == "resnet18" else 0.0)
    if (arch, method, sparsity) == ("small_cnn", "lwm", 0.9):
        clean = 0.80 + 0.04 * seed
    return clean, 0.6 * clean, 0.55 * clean


def _latency(method: str, sparsity: float, seed: int) -> float:
    """Dense 2 ms; a structured model 2 * (1 - s/2) ms + 0.1 ms per seed; an unstructured one runs as dense."""
    if method == "dense":
        return 2.0
    return 2.0 * (1 - sparsity / 2) + 0.1 * seed if method in STRUCTURED else 2.0 + 0.05 * seed


def _summary_row(arch, seed, method, sparsity, accuracy) -> dict:
    clean, pgd, aa = accuracy
    return dict(
        dataset="digits", arch=arch, seed=seed, method=method, sparsity_target=sparsity,
        sparsity_measured=sparsity + 0.001 * seed * (method != "dense"), params_total=PARAMS,
        params_nonzero=round(PARAMS * (1 - sparsity)), flops_dense=FLOPS,
        flops_effective=FLOPS * (1 - sparsity), clean_acc=clean, pgd_acc=pgd, autoattack_acc=aa,
        n_examples=500, norm="Linf", eps=0.1,
        # aggregate writes no impl for dense models
        impl=None if method == "dense" else IMPL.get(method, method), structured=method in STRUCTURED,
        latency_ms=_latency(method, sparsity, seed), latency_dense_ms=2.0,
    )


def _summary(methods=METHODS + STRUCTURED, new_columns=True) -> pd.DataFrame:
    """new_columns=False: the format of aggregates older than impl, structured and latency."""
    rows = [_summary_row(arch, seed, method, sparsity, _accuracy(method, sparsity, seed, arch))
            for arch in ARCH_LAYERS for seed in SEEDS
            for method, sparsity in [("dense", 0.0)] + [(m, s) for m in methods for s in SPARSITIES]]
    return pd.DataFrame(rows, columns=INPUT_COLUMNS["summary"] + NEW_SUMMARY_COLUMNS * new_columns)


def _harp_density(i: int, sparsity: float) -> float:
    """HARP keeps even layers 2x denser and odd layers 2x sparser than uniform."""
    return min((1 - sparsity) * (2.0 if i % 2 == 0 else 0.5), 1.0)


def _mrpf_sparsity(i: int, n_layers: int, sparsity: float) -> float:
    """MRPF prunes later (less sensitive, see _sensitivity) layers more."""
    return min(sparsity * (0.6 + 0.8 * i / (n_layers - 1)), 0.999)


def _layers() -> pd.DataFrame:
    rows = []
    for arch, layers in ARCH_LAYERS.items():
        for seed in SEEDS:
            for method in METHODS + ("harp", "mrpf"):
                for sparsity in SPARSITIES:
                    for i, layer in enumerate(layers):
                        if method == "harp":
                            value = 1 - _harp_density(i, sparsity)
                        elif method == "mrpf":
                            value = _mrpf_sparsity(i, len(layers), sparsity)
                        else:
                            # Global pruning spares the first and last layers, as real global magnitude pruning tends to.
                            edge = method == "lwm_global" and i in (0, len(layers) - 1)
                            value = sparsity * (0.3 if edge else 1 + 0.1 * (i % 3 - 1) * (1 - sparsity))
                        rows.append(dict(dataset="digits", arch=arch, seed=seed, method=method,
                                         sparsity_target=sparsity, layer=layer, layer_index=i,
                                         n_params=1000 * (i + 1), sparsity=min(value + 0.002 * seed, 1.0),
                                         impl=IMPL.get(method, method)))
    return pd.DataFrame(rows, columns=INPUT_COLUMNS["layer_sparsity"] + ["impl"])


def _sensitivity() -> pd.DataFrame:
    rows = []
    for arch, layers in ARCH_LAYERS.items():
        for seed in SEEDS:
            for i, module in enumerate(layers):
                s = 0.5 / (i + 1) + 0.02 * seed
                rows.append(dict(dataset="digits", arch=arch, seed=seed, module=module, module_index=i,
                                 n_params=1000 * (i + 1), base_loss=1.0, perturbed_loss=1.0 + s, sensitivity=s))
    return pd.DataFrame(rows, columns=INPUT_COLUMNS["sensitivity"])


def _curves() -> pd.DataFrame:
    rows = []

    def add(arch, seed, stage, method, sparsity, epochs, start, gain):
        for epoch in range(1, epochs + 1):
            robust = start + gain * (1 - np.exp(-epoch / 3)) + 0.01 * seed
            rows.append(dict(dataset="digits", arch=arch, seed=seed, stage=stage, method=method,
                             sparsity_target=sparsity, epoch=epoch, lr=0.05 / epoch, train_loss=2.0 / epoch,
                             train_acc=robust + 0.1, val_clean_acc=robust + 0.3, val_robust_acc=robust, seconds=1.0))

    for arch in ARCH_LAYERS:
        for seed in SEEDS:
            add(arch, seed, "pretrain", "dense", 0.0, 10, 0.1, 0.45)
            for method in METHODS:
                for sparsity in SPARSITIES:
                    start = 0.5 - {"lwm": 0.1, "lwm_global": 0.05, "random": 0.3}[method] * sparsity
                    add(arch, seed, "finetune", method, sparsity, 5, start, 0.05 + 0.05 * sparsity)
    return pd.DataFrame(rows, columns=INPUT_COLUMNS["training_curves"])


def _pwoa_terms(phase: str, epoch: int, seed: int) -> dict:
    """PwoA's loss terms: all positive while ADMM runs; the retrain phase has no ADMM term and a negative
    HSIC(Y, Z) term (it is maximised)."""
    terms = dict(loss_distill=1.0 / epoch + 0.01 * seed, loss_hsic_x=0.02 / epoch, loss_hsic_y=0.003)
    if phase == "admm":
        terms["loss_admm"] = 10.0 / epoch**2
    else:
        terms["loss_hsic_y"] = -0.003
    return terms


def _prune_curves() -> pd.DataFrame:
    rows = []
    for arch in ARCH_LAYERS:
        for seed in SEEDS:
            for phase, epochs in (("admm", 4), ("retrain", 3)):
                for epoch in range(1, epochs + 1):
                    terms = _pwoa_terms(phase, epoch, seed)
                    rows.append(dict(dataset="digits", arch=arch, seed=seed, method="pwoa", sparsity_target=0.9,
                                     impl="pwoa", phase=phase, epoch=epoch, lr=0.01, train_loss=sum(terms.values()),
                                     train_acc=0.5, **terms, val_clean_acc=0.8, val_robust_acc=0.4, seconds=1.0))
            # Another method's curves, with its own columns, which the PwoA figure must leave out.
            for epoch in range(1, 4):
                rows.append(dict(dataset="digits", arch=arch, seed=seed, method="harp", sparsity_target=0.9,
                                 impl="harp", phase="harp_prune", epoch=epoch, lr=0.1, train_loss=1.5, train_acc=0.5,
                                 compression=1 + epoch, val_clean_acc=0.8, val_robust_acc=0.4, seconds=1.0))
    return pd.DataFrame(rows)


CRITERIA = {"hydra": 0.02, "l1_filter": -0.03, "lwm": 0.0, "mrpf": 0.01, "random": -0.05}
MODES = {"none": (0.30, 0.05), "natural": (0.75, 0.08), "adversarial": (0.70, 0.35)}  # clean, AA


def _study_finetune() -> pd.DataFrame:
    """Criterion x fine-tuning mode at 90 %: the mode moves accuracy far more than the criterion."""
    rows = []
    for arch in ARCH_LAYERS:
        for seed in SEEDS:
            dense = _summary_row(arch, seed, "dense", 0.0, (0.9, 0.5, 0.45))
            rows.append({**dense, "finetune_mode": None})
            for criterion, offset in CRITERIA.items():
                for mode, (clean, aa) in MODES.items():
                    accuracy = (clean + offset + 0.02 * seed, aa + 0.5 * offset, aa + offset / 2 + 0.01 * seed)
                    rows.append({**_summary_row(arch, seed, criterion, 0.9, accuracy), "finetune_mode": mode})
    return pd.DataFrame(rows, columns=INPUT_COLUMNS["study_finetune"] + NEW_SUMMARY_COLUMNS)


DENSE_BY_OBJECTIVE = {"pgd_at": (0.80, 0.40), "natural": (0.95, 0.0), "trades": (0.78, 0.42)}  # clean, AA
PAIRS = {("pgd_at", "pgd_at"): (0.76, 0.36), ("pgd_at", "natural"): (0.72, 0.02), ("natural", "natural"): (0.93, 0.0),
         ("natural", "pgd_at"): (0.70, 0.30), ("trades", "trades"): (0.74, 0.40)}


def _study_objectives() -> pd.DataFrame:
    """Sehwag et al.: dense models per pretraining objective and lwm at 90 % per pretraining -> fine-tuning pair
    (clean + 0.02 per seed for all)."""
    rows = []
    for arch in ARCH_LAYERS:
        for seed in SEEDS:
            for objective, (clean, aa) in DENSE_BY_OBJECTIVE.items():
                dense = _summary_row(arch, seed, "dense", 0.0, (clean + 0.02 * seed, aa, aa))
                rows.append({**dense, "pretrain_objective": objective, "finetune_objective": None})
            for (pretrain, finetune), (clean, aa) in PAIRS.items():
                pruned = _summary_row(arch, seed, "lwm", 0.9, (clean + 0.02 * seed, aa, aa))
                rows.append({**pruned, "pretrain_objective": pretrain, "finetune_objective": finetune})
    return pd.DataFrame(rows, columns=INPUT_COLUMNS["study_objectives"] + NEW_SUMMARY_COLUMNS)


def per_point(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-point results consistent with the accuracies of every record (its first round(acc * n) points right),
    all on the same points."""
    rows = []
    for table in ("summary", "study_finetune", "study_objectives"):
        for r in tables[table].to_dict("records"):
            for metric in ("clean", "pgd", "autoattack"):
                k = round(r[f"{metric}_acc"] * r["n_examples"])
                rows.append({"table": table, **{c: r.get(c) for c in ("dataset", "arch", "seed", "method", "impl", "sparsity_target",
                                                                       "finetune_mode", "pretrain_objective", "finetune_objective")},
                             "points_sha256": "same", "metric": metric, "correct": "1" * k + "0" * (r["n_examples"] - k)})
    return pd.DataFrame(rows)


def distances(summary: pd.DataFrame) -> pd.DataFrame:
    """HO-FMN distances of every summary record: 500 points, the first round(AA acc * 500) beyond eps."""
    rows = []
    for r in summary.to_dict("records"):
        k = round(r["autoattack_acc"] * r["n_examples"])
        d = np.r_[np.linspace(1.1, 3, k), np.linspace(0.2, 0.9, r["n_examples"] - k)] * r["eps"]
        rows.append({"table": "summary", **{c: r.get(c) for c in ("dataset", "arch", "seed", "method", "impl", "sparsity_target")},
                     "norm": r["norm"], "eps": r["eps"], "distances": " ".join(map(repr, d.tolist()))})
    return pd.DataFrame(rows)


def write_tables(directory: Path, **overrides: pd.DataFrame | None) -> Path:
    """Every input table; an override of None leaves that file out."""
    tables = {"summary": _summary(), "layer_sparsity": _layers(), "sensitivity": _sensitivity(),
              "training_curves": _curves(), "prune_curves": _prune_curves(), "study_finetune": _study_finetune(),
              "study_objectives": _study_objectives()}
    tables["per_point"] = per_point(tables)
    tables["distances"] = distances(tables["summary"])
    tables.update(overrides)
    directory.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if df is not None:
            df.to_csv(directory / f"{name}.csv", index=False)
    return directory


ONLY_SUMMARY = dict(layer_sparsity=None, sensitivity=None, training_curves=None, prune_curves=None,
                    study_finetune=None, study_objectives=None, per_point=None, distances=None)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """Every table, every figure (PNG only: PDF output is checked on a smaller report below)."""
    tmp = tmp_path_factory.mktemp("report")
    tables = write_tables(tmp / "tables")
    records, logger = _Records(), logging.getLogger("advprune.report")
    logger.addHandler(records)
    try:
        written = make_report(str(tables), str(tmp / "out"), formats=("png",), dpi=60)
    finally:
        logger.removeHandler(records)
    return tmp, written, records.messages


def _check_images(paths):
    for path in (p for p in paths if p.endswith(".png")):
        image = matplotlib.image.imread(path)
        height, width = image.shape[:2]
        assert 100 < height < 4000 and 200 < width < 4000, (path, image.shape)
        assert image[..., :3].std() > 0.01, f"{path} is blank"


def test_writes_every_expected_output(report):
    tmp, written, warnings = report
    expected = expected_outputs(str(tmp / "out"), ("png",))
    assert written == expected
    assert len(expected) == len(FIGURES) + 3 * len(TABLES) == 10 + 15
    assert set(TABLES) == set(BUILDERS) | set(findings.BUILDERS)
    for path in expected:
        assert os.path.getsize(path) > 0, path
    _check_images(expected)
    # Every figure has data here: none may fall back to a placeholder, no table may be empty.
    assert warnings == []


def test_tables_hold_means_and_intervals_over_seeds(report):
    tmp, _, _ = report
    md = (tmp / "out/tables/robustness.md").read_text()
    tex = (tmp / "out/tables/robustness.tex").read_text()
    csv = pd.read_csv(tmp / "out/tables/robustness.csv")
    # small_cnn, lwm, 90 %: clean 80 % and 84 % -> mean 82.00, sample std 2.83.
    row = csv[(csv["arch"] == "small_cnn") & (csv["method"] == "lwm") & (csv["sparsity_target_pct"] == 90)]
    assert len(row) == 1
    assert row["clean_pct"].iloc[0] == pytest.approx(82.0)
    assert row["clean_pct_std"].iloc[0] == pytest.approx(2.8284, abs=1e-4)
    # Two seeds: t(0.975, 1) = 12.706 times the standard error 2, the upper end clipped to 100 %.
    assert row["clean_pct_lo"].iloc[0] == pytest.approx(82.0 - 12.7062 * 2, abs=1e-3) and row["clean_pct_hi"].iloc[0] == 100
    assert row["verified_pct"].isna().all()
    assert row["flops_reduction"].iloc[0] == pytest.approx(10.0)
    assert row["params_nonzero"].iloc[0] == 10_000
    # PGD 0.6 and AA 0.55 of clean: means 49.2 and 45.1, half-widths 12.706 * 1.2 and 12.706 * 1.1.
    assert ("| digits | small_cnn | lwm | 90 | 90.05 | 2 | 82.0 [56.6, 100.0] | 49.2 [34.0, 64.4] | 45.1 [31.1, 59.1] | not computed "
            "| not computed | 10,000 | 10.0× |" in md)
    assert r"digits & small\_cnn & lwm & 90 & 90.05 & 2 & 82.0 [56.6, 100.0] &" in tex
    assert r"lwm\_global" in tex and "lwm_global" not in tex
    assert tex.startswith(r"\begin{tabular}") and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"Clean acc. (\%)" in tex
    # Two archs, each: dense + 5 methods x 3 sparsities.
    assert len(csv) == 2 * (1 + 5 * 3)
    assert (csv.groupby("arch")["method"].first() == "dense").all(), "dense must lead each block"
    assert md.count("\n") == 2 + len(csv)


def test_finetune_study_table_has_a_row_per_criterion_and_mode(report):
    tmp, _, _ = report
    csv = pd.read_csv(tmp / "out/tables/finetune_study.csv", keep_default_na=False, na_values=[""])
    md = (tmp / "out/tables/finetune_study.md").read_text()
    tex = (tmp / "out/tables/finetune_study.tex").read_text()
    # Per arch: the dense model, then 5 criteria x 3 modes, modes in training-effort order.
    assert len(csv) == 2 * (1 + 5 * 3)
    block = csv[csv["arch"] == "small_cnn"]
    assert block["method"].tolist() == ["dense"] + [c for c in sorted(CRITERIA) for _ in MODES]
    assert block["finetune_mode"].tolist()[1:] == list(MODES) * 5
    assert block["finetune_mode"].isna().iloc[0]
    # random, adversarial: clean 0.70 - 0.05 + 0.02 * seed -> 65 and 67 %; AA 0.35 - 0.025 + 0.01 * seed.
    row = block[(block["method"] == "random") & (block["finetune_mode"] == "adversarial")].iloc[0]
    assert (row["sparsity_target_pct"], row["n_seeds"]) == (90, 2)
    assert row["clean_pct"] == pytest.approx(66.0) and row["clean_pct_std"] == pytest.approx(1.4142, abs=1e-4)
    assert row["autoattack_pct"] == pytest.approx(33.0) and row["autoattack_pct_std"] == pytest.approx(0.7071, abs=1e-4)
    assert "| digits | small_cnn | random | adversarial | 90 | 2 | 66.0 [53.3, 78.7] |" in md
    assert "| digits | small_cnn | dense | – | 0 | 2 |" in md
    assert r"digits & small\_cnn & l1\_filter & natural & 90 & 2 &" in tex and "dense & -- & 0" in tex
    assert md.count("\n") == 2 + len(csv)


def _expected_retained(pretrain: str, finetune: str, metric: int) -> float:
    """Mean over seeds of pruned / dense (same pretraining objective) in %, from the synthetic constants."""
    clean = metric == 0
    ratios = [(PAIRS[pretrain, finetune][metric] + 0.02 * seed * clean)
              / (DENSE_BY_OBJECTIVE[pretrain][metric] + 0.02 * seed * clean) for seed in SEEDS]
    return 100 * float(np.mean(ratios))


def test_objective_study_retains_against_the_dense_model_of_the_same_pretraining(report):
    tmp, _, _ = report
    csv = pd.read_csv(tmp / "out/tables/objective_study.csv")
    md = (tmp / "out/tables/objective_study.md").read_text()
    block = csv[csv["arch"] == "small_cnn"]
    assert list(zip(block["pretrain_objective"], block["finetune_objective"])) == [
        ("natural", "natural"), ("natural", "pgd_at"), ("pgd_at", "natural"), ("pgd_at", "pgd_at"), ("trades", "trades")]
    assert (block["method"] == "lwm").all() and (block["sparsity_target_pct"] == 90).all()
    for pair in PAIRS:
        row = block[(block["pretrain_objective"] == pair[0]) & (block["finetune_objective"] == pair[1])].iloc[0]
        assert row["retained_clean_pct"] == pytest.approx(_expected_retained(*pair, 0), abs=1e-3), pair
        assert row["dense_clean_pct"] == pytest.approx(100 * DENSE_BY_OBJECTIVE[pair[0]][0] + 1), pair
        if pair[0] == "natural":
            # The naturally trained dense model has 0 % robust accuracy: nothing to retain, not infinity.
            assert np.isnan(row["retained_autoattack_pct"]), pair
        else:
            assert row["retained_autoattack_pct"] == pytest.approx(_expected_retained(*pair, 1), abs=1e-3), pair
    # pgd_at -> natural keeps 72/80 = 90 % of the PGD-AT dense model's clean accuracy (seed 0); against the
    # natural dense model it would be 72/95.
    assert _expected_retained("pgd_at", "natural", 0) == pytest.approx(100 * (0.90 + 0.74 / 0.82) / 2)
    # no record has verified accuracy here: "not computed", and nothing retained of it
    assert "| digits | small_cnn | lwm | pgd_at | natural | 90 | 2 | 81.00 | 40.00 | 73.0 [60.3, 85.7] | 2.0 [2.0, 2.0] | not computed | 90.1 [" in md
    assert "| natural | pgd_at | 90 | 2 | 96.00 | 0.00 | 71.0 [58.3, 83.7] | 30.0 [30.0, 30.0] | not computed | 74.0 [" in md
    rows = [line for line in md.splitlines() if line.startswith("| digits")]
    assert all(line.endswith("| n/a |") for line in rows)
    # the naturally pretrained pairs: no robust accuracy to retain either
    assert sum(line.endswith("| n/a | n/a |") for line in rows) == 2 * 2
    # The retained intervals (bootstrap over the shared points and the seeds) hold the retained fraction.
    retained = csv.dropna(subset=["retained_autoattack_pct"])
    for m in ("clean", "autoattack"):
        rows = csv.dropna(subset=[f"retained_{m}_pct"])
        assert (rows[f"retained_{m}_pct_lo"] <= rows[f"retained_{m}_pct"] + 1e-9).all()
        assert (rows[f"retained_{m}_pct"] <= rows[f"retained_{m}_pct_hi"] + 1e-9).all()
    assert (retained["retained_autoattack_pct_hi"] > retained["retained_autoattack_pct_lo"]).any()


def test_objective_study_without_a_dense_model_shows_na():
    study = _study_objectives()
    study = study[~((study["method"] == "dense") & (study["pretrain_objective"] == "trades"))]
    table = objective_study_table(study)
    trades = table[table["pretrain_objective"] == "trades"]
    assert len(trades) == 2 and trades["retained_clean_pct"].isna().all() and trades["dense_clean_pct"].isna().all()
    assert table[table["pretrain_objective"] != "trades"]["retained_clean_pct"].notna().all()
    assert "| trades | trades | 90 | 2 | n/a | n/a | 75.0 [62.3, 87.7] | 40.0 [40.0, 40.0] | not computed | n/a | n/a | n/a |" in to_markdown(
        table, objective_study_display)
    fig = figures.objective_study(study)
    ax = fig.axes[0]
    # trades -> trades is the last group: both its bars are missing and say so.
    assert sum(t.get_text() == "n/a" for t in ax.texts) == 2 + 2  # + the natural pretraining's AA bars


def test_latency_table_lists_structured_models_against_dense(report):
    tmp, _, _ = report
    csv = pd.read_csv(tmp / "out/tables/latency.csv")
    md = (tmp / "out/tables/latency.md").read_text()
    # Unstructured models keep their zeros in dense tensors, so they are left out.
    assert set(csv["method"]) == {"dense", *STRUCTURED}
    assert len(csv) == 2 * (1 + len(STRUCTURED) * len(SPARSITIES))
    row = csv[(csv["arch"] == "small_cnn") & (csv["method"] == "l1_filter") & (csv["sparsity_target_pct"] == 90)].iloc[0]
    # 2 ms dense; 1.1 and 1.2 ms over the seeds -> speed-ups 1.818 and 1.667.
    assert row["latency_ms"] == pytest.approx(1.15) and row["latency_dense_ms"] == pytest.approx(2.0)
    assert row["speedup"] == pytest.approx((2 / 1.1 + 2 / 1.2) / 2, abs=1e-4)
    assert row["params_nonzero"] == 10_000 and row["flops_reduction"] == pytest.approx(10.0)
    dense = csv[(csv["arch"] == "small_cnn") & (csv["method"] == "dense")].iloc[0]
    assert dense["speedup"] == pytest.approx(1.0)
    assert "| digits | small_cnn | l1_filter | 90 | 2 | 10,000 | 100,000 | 10.0× | 1.150 ± 0.071 | 2.000 | 1.74 ± 0.11× |" in md


def test_latency_table_without_structured_flags_keeps_every_timed_model():
    summary = _summary()
    assert len(latency_table(summary)) == 2 * (1 + 2 * 3)
    # An aggregate that does not say which models are structured: none can be left out.
    unknown = summary.drop(columns="structured").assign(structured=np.nan)
    assert len(latency_table(unknown)) == 2 * (1 + 5 * 3)
    # No latency measured at all: an empty table, still written in every format.
    untimed = latency_table(summary.assign(latency_ms=np.nan))
    assert untimed.empty
    assert to_markdown(untimed, latency_display).count("\n") == 2


def test_old_tables_read_with_implementation_defaulting_to_the_key(tmp_path):
    tables = write_tables(tmp_path, summary=_summary(new_columns=False), layer_sparsity=_layers().drop(columns="impl"))
    summary, layers = read_table(str(tables), "summary"), read_table(str(tables), "layer_sparsity")
    assert (summary["impl"] == summary["method"]).all() and (layers["impl"] == layers["method"]).all()
    assert summary["latency_ms"].isna().all() and summary["structured"].isna().all()
    assert latency_table(summary).empty
    new = read_table(str(write_tables(tmp_path / "new")), "summary")
    # Dense models have no implementation in the CSV; lwm_global is an lwm.
    assert set(zip(new["method"], new["impl"])) >= {("dense", "dense"), ("lwm_global", "lwm"), ("mrpf", "mrpf")}
    assert new.loc[new["method"] == "mrpf", "structured"].eq(True).all()
    assert new.loc[new["method"] == "lwm", "structured"].eq(False).all()


def _bars(ax) -> dict[str, list[float]]:
    """Legend label -> bar heights of each bar series in a panel."""
    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers if isinstance(c, BarContainer)}


def test_finetune_study_figure_groups_modes_per_criterion():
    study = _study_finetune()
    fig = figures.finetune_study(study)
    assert len(fig.axes) == 2 * 2  # (resnet18, small_cnn) x (clean, AutoAttack)
    table = finetune_study_table(study)
    for ax, (arch, metric, name) in zip(fig.axes, [(a, m, n) for a in ("resnet18", "small_cnn")
                                                   for m, n in (("clean", "Clean"), ("autoattack", "AutoAttack"))]):
        assert ax.get_title().startswith(f"digits / {arch}, 90% sparsity: {name}")
        assert ax.get_ylabel() == f"{name} accuracy (%)"
        assert [t.get_text() for t in ax.get_xticklabels()] == sorted(CRITERIA)
        bars = _bars(ax)
        assert list(bars) == list(MODES)
        for mode, heights in bars.items():
            rows = table[(table["arch"] == arch) & (table["finetune_mode"] == mode)].sort_values("method")
            assert heights == pytest.approx(rows[f"{metric}_pct"].tolist()), (arch, metric, mode)
        # The dense model of the study as the reference line.
        dense = table[(table["arch"] == arch) & (table["method"] == "dense")][f"{metric}_pct"].iloc[0]
        assert any(line.get_ydata()[0] == pytest.approx(dense) for line in ax.get_lines())
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [*MODES, "dense"]


def test_objective_study_figure_shows_retained_fractions():
    fig = figures.objective_study(_study_objectives())
    assert len(fig.axes) == 2
    table = objective_study_table(_study_objectives())
    for ax, arch in zip(fig.axes, ("resnet18", "small_cnn")):
        assert ax.get_title().startswith(f"digits / {arch}: lwm at 90% sparsity (10× compression)")
        assert ax.get_ylabel() == "Accuracy retained (% of dense)"
        ticks = ax.get_xticklabels()
        assert [t.get_text() for t in ticks] == [
            "natural → natural", "natural → pgd_at", "pgd_at → natural", "pgd_at → pgd_at", "trades → trades"]
        assert [t.get_fontweight() for t in ticks] == ["bold", "normal", "normal", "bold", "bold"]
        rows = table[table["arch"] == arch]
        bars = _bars(ax)
        assert bars["benign (clean)"] == pytest.approx(rows["retained_clean_pct"].tolist())
        # No robust bar for the two pairs pretrained naturally (0 % dense robust accuracy).
        assert bars["robust (AutoAttack)"] == pytest.approx(rows["retained_autoattack_pct"].dropna().tolist())
        assert any(list(line.get_ydata()) == [100, 100] for line in ax.get_lines())


def _errorbar_lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {c.get_label(): (np.asarray(c.lines[0].get_xdata()), np.asarray(c.lines[0].get_ydata()))
            for c in ax.containers if isinstance(c, ErrorbarContainer)}


def test_harp_layer_rates_compare_learned_density_with_uniform():
    layers = _layers()
    fig = figures.harp_layer_rates(layers)
    assert len(fig.axes) == 2 * len(SPARSITIES)
    for ax, (arch, target) in zip(fig.axes, [(a, s) for a in ("resnet18", "small_cnn") for s in SPARSITIES]):
        names = ARCH_LAYERS[arch]
        assert ax.get_title() == f"digits / {arch}: {100 * target:g}% target"
        assert [t.get_text() for t in ax.get_xticklabels()] == names
        lines = _errorbar_lines(ax)
        assert list(lines) == ["harp"], "only HARP's allocation is drawn against the uniform one"
        x, y = lines["harp"]
        # Mean over the seeds (+0.002 sparsity for seed 1) of 1 - sparsity, in %.
        expected = [100 * (_harp_density(i, target) - 0.001) for i in range(len(names))]
        assert list(x) == list(range(len(names))) and y == pytest.approx(expected)
        uniform = [line for line in ax.get_lines() if line.get_label() == "uniform"]
        assert len(uniform) == 1 and uniform[0].get_ydata()[0] == pytest.approx(100 * (1 - target))
        assert "density" in ax.get_ylabel() and "(%)" in ax.get_ylabel()
    with pytest.raises(figures.NoData, match="no HARP"):
        figures.harp_layer_rates(layers[layers["impl"] != "harp"])


def test_mrpf_scatter_pairs_each_layer_with_its_sensitivity():
    layers, sens = _layers(), _sensitivity()
    fig = figures.mrpf_sensitivity_vs_sparsity(sens, layers)
    assert len(fig.axes) == 2 * len(SPARSITIES)
    for ax, (arch, target) in zip(fig.axes, [(a, s) for a in ("resnet18", "small_cnn") for s in SPARSITIES]):
        (points,) = [c for c in ax.collections if c.get_label() == "mrpf"]
        names = ARCH_LAYERS[arch]
        # Layers in name order (groupby), means over the seeds of what _sensitivity and _layers write.
        expected = sorted((names[i], 0.5 / (i + 1) + 0.01,
                           100 * np.mean([min(_mrpf_sparsity(i, len(names), target) + 0.002 * seed, 1.0) for seed in SEEDS]))
                          for i in range(len(names)))
        assert points.get_offsets().data == pytest.approx(np.array([e[1:] for e in expected]))
        assert "mrpf: ρ = -" in ax.texts[-1].get_text()
        assert ax.get_ylabel() == "Allocated layer sparsity (%)"
    # small_cnn at 50 %: no sparsity is capped, so sparsity falls strictly as sensitivity rises.
    assert fig.axes[3].texts[-1].get_text() == "mrpf: ρ = -1.00"
    with pytest.raises(figures.NoData, match="no MRPF layer matches"):
        figures.mrpf_sensitivity_vs_sparsity(sens.assign(seed=7), layers)


def test_pwoa_loss_terms_per_phase():
    curves = _prune_curves()
    fig = figures.pwoa_loss_terms(curves)
    assert len(fig.axes) == 2 * 2  # (resnet18, small_cnn) x (admm, retrain)
    admm, retrain = fig.axes[2], fig.axes[3]  # small_cnn
    assert admm.get_title() == "digits / small_cnn: pwoa at 90%\nadmm phase"
    labels = {line.get_label(): line for line in admm.get_lines()}
    assert set(labels) == {"distill", "hsic_x", "hsic_y", "admm", "total"}
    assert list(labels["admm"].get_xdata()) == [1, 2, 3, 4]
    # Means over seeds: distill 1/epoch + 0.005; ADMM 10/epoch^2.
    assert labels["distill"].get_ydata() == pytest.approx([1 / e + 0.005 for e in range(1, 5)])
    assert labels["admm"].get_ydata() == pytest.approx([10 / e**2 for e in range(1, 5)])
    assert admm.get_yscale() == "log"
    # No ADMM term after ADMM; the negative HSIC(Y, Z) term needs a symmetric log axis.
    assert {line.get_label() for line in retrain.get_lines()} == {"distill", "hsic_x", "hsic_y", "total"}
    assert retrain.get_yscale() == "symlog"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["distill", "hsic_x", "hsic_y", "admm",
                                                                  "total (train_loss)"]
    with pytest.raises(figures.NoData, match="no PwoA"):
        figures.pwoa_loss_terms(curves[curves["impl"] != "pwoa"])
    with pytest.raises(figures.NoData, match="no loss_"):
        figures.pwoa_loss_terms(curves.drop(columns=[c for c in curves if c.startswith("loss_")]))


def test_single_seed_shows_no_std():
    summary = _summary()
    table = robustness_table(summary[summary["seed"] == 0])
    assert (table["n_seeds"] == 1).all()
    assert "±" not in to_markdown(table) and r"\pm" not in to_latex(table)
    # One seed: the Wilson interval over its 500 points (lwm at 90 %: 400 right).
    assert "| digits | small_cnn | lwm | 90 | 90.00 | 1 | 80.0 [76.3, 83.3] |" in to_markdown(table)


def test_reruns_are_byte_identical(tmp_path):
    # The summary alone: real figures and tables and the placeholders are enough to catch embedded timestamps.
    tables = write_tables(tmp_path / "tables", **ONLY_SUMMARY)
    first, second = (make_report(str(tables), str(tmp_path / out), formats=("png", "pdf", "svg"), dpi=50)
                     for out in ("a", "b"))
    assert first == expected_outputs(str(tmp_path / "a"), ("png", "pdf", "svg"))
    for a, b in zip(first, second):
        assert Path(a).read_bytes() == Path(b).read_bytes(), a
    for path in (p for p in first if p.endswith(".pdf")):
        assert Path(path).read_bytes().startswith(b"%PDF")
    # Timestamps have one-second resolution, so equal bytes alone could be luck: check they are absent.
    pdf, svg = (Path(tmp_path / "a/figures" / f"robustness_vs_sparsity.{ext}").read_bytes() for ext in ("pdf", "svg"))
    assert b"/CreationDate" not in pdf and b"dc:date" not in svg


def _labelled_colors(fig) -> dict[str, tuple]:
    """Legend label -> RGBA of every labelled data line in every panel of a figure."""
    colors = {}
    for ax in fig.axes:
        artists = [(c.get_label(), c.lines[0]) for c in ax.containers
                   if isinstance(c, ErrorbarContainer) and c.lines[0] is not None]
        artists += [(line.get_label(), line) for line in ax.get_lines()]
        for label, line in artists:
            if not label.startswith("_"):
                colors.setdefault(label, set()).add(matplotlib.colors.to_rgba(line.get_color()))
    return colors


def test_method_colours_are_fixed_per_method():
    names = ["dense", "lwm", "random", "zeta"]
    # "b_new" sorts between existing names: a sorted-order palette would shift every colour after it.
    assert method_colors(names) == {k: v for k, v in method_colors(names + ["b_new", "a_new"]).items() if k in names}
    assert method_color("dense") == DENSE_COLOR == "#000000"
    assert len(set(KNOWN_COLORS.values())) == len(KNOWN_COLORS), "known methods must not share a colour"
    assert {"hydra", "harp", "pwoa", "mrpf", "lwm", "random", "l1_filter", "lwm_iter"} <= set(KNOWN_COLORS)
    assert method_color("some_new_method") not in {DENSE_COLOR, *KNOWN_COLORS.values()}
    assert not set(FALLBACK_COLORS) & {DENSE_COLOR, *KNOWN_COLORS.values()}
    # A key is coloured by its own name, not by its implementation: lwm_iter (an lwm) is not lwm.
    assert method_color("lwm_iter") != method_color("lwm")


def test_figures_draw_each_method_in_its_colour():
    with_new = pd.concat([_summary(), _summary(("hydra",))[lambda d: d["method"] == "hydra"]])
    drawn = [
        _labelled_colors(figures.robustness_vs_sparsity(_summary())),
        _labelled_colors(figures.robustness_vs_sparsity(with_new)),
        _labelled_colors(figures.layer_sparsity(_layers())),
        _labelled_colors(figures.training_curves(_curves())),
    ]
    for colors in drawn:
        for method in METHODS:
            assert colors[method] == {matplotlib.colors.to_rgba(method_color(method))}, method
    assert "hydra" in drawn[1]
    # Every method, structured ones included, in one panel per metric and arch.
    assert set(drawn[0]) == {*METHODS, *STRUCTURED}
    harp = _labelled_colors(figures.harp_layer_rates(_layers()))
    assert harp["harp"] == {matplotlib.colors.to_rgba(method_color("harp"))}


def test_sparsity_axis_separates_90_from_99():
    fig = figures.robustness_vs_sparsity(_summary())
    fig.canvas.draw()
    ax = fig.axes[0]
    x50, x90, x99 = (ax.transData.transform((s, 50))[0] for s in (50, 90, 99))
    # On a linear axis 90 -> 99 would be under a quarter of 50 -> 90.
    assert x99 - x90 > x90 - x50 > 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50", "90", "99"]


def test_missing_or_empty_optional_tables_give_placeholders(tmp_path, caplog):
    layers = _layers()
    tables = write_tables(
        tmp_path / "tables", sensitivity=None, training_curves=None, prune_curves=None, study_finetune=None,
        # Header only (what aggregate writes when a study has no runs), and no HARP or MRPF model.
        study_objectives=_study_objectives().iloc[:0], layer_sparsity=layers[~layers["impl"].isin(["harp", "mrpf"])],
    )
    with caplog.at_level(logging.WARNING, logger="advprune.report"):
        written = make_report(str(tables), str(tmp_path / "out"), formats=("png",), dpi=40)
    assert written == expected_outputs(str(tmp_path / "out"), ("png",))
    assert all(os.path.getsize(p) > 0 for p in written)
    for message in ("figure sensitivity: no rows in sensitivity.csv",
                    "figure training_curves: no rows in training_curves.csv",
                    "figure finetune_study: no rows in study_finetune.csv",
                    "figure objective_study: no rows in study_objectives.csv",
                    "figure harp_layer_rates: layer_sparsity.csv has no HARP (impl harp) models",
                    "figure mrpf_sensitivity_vs_sparsity: no rows in sensitivity.csv",
                    "figure pwoa_loss_terms: no rows in prune_curves.csv",
                    "table finetune_study: no rows", "table objective_study: no rows"):
        assert message in caplog.text
    assert "figure layer_sparsity:" not in caplog.text and "table latency" not in caplog.text
    for name in ("finetune_study", "objective_study"):
        assert pd.read_csv(tmp_path / "out/tables" / f"{name}.csv").empty
        assert (tmp_path / "out/tables" / f"{name}.md").read_text().count("\n") == 2


def test_without_per_point_results_the_study_figure_has_unpaired_intervals(tmp_path, caplog):
    # Records written before per-point results existed: every figure is still drawn.
    tables = write_tables(tmp_path / "tables", per_point=None)
    with caplog.at_level(logging.WARNING, logger="advprune.report"):
        make_report(str(tables), str(tmp_path / "out"), formats=("png",), dpi=40)
    assert "figure objective_study" not in caplog.text
    retained = pd.read_csv(tmp_path / "out/tables/objective_study.csv")["retained_clean_pct_lo"]
    assert retained.notna().all()


def test_no_tables_at_all_still_give_every_output(tmp_path):
    tables = tmp_path / "tables"
    tables.mkdir()
    (tables / "summary.csv").write_text("\n")  # what write_csv leaves for no rows
    written = make_report(str(tables), str(tmp_path / "out"), formats=("png",), dpi=40)
    assert written == expected_outputs(str(tmp_path / "out"), ("png",))
    assert all(os.path.getsize(p) > 0 for p in written)


def test_table_missing_a_column_is_an_error(tmp_path):
    tables = write_tables(tmp_path / "tables", summary=_summary().drop(columns="pgd_acc"))
    with pytest.raises(ValueError, match="pgd_acc"):
        make_report(str(tables), str(tmp_path / "out"), formats=("png",), dpi=50)
    tables = write_tables(tmp_path / "tables2", study_objectives=_study_objectives().drop(columns="pretrain_objective"))
    with pytest.raises(ValueError, match="pretrain_objective"):
        make_report(str(tables), str(tmp_path / "out2"), formats=("png",), dpi=50)


def test_tex_escape():
    assert tex_escape("lwm_global 50% & #1 {x}") == r"lwm\_global 50\% \& \#1 \{x\}"


def test_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    script = str(REPO / "scripts" / "report.py")
    # The summary alone, in the format before impl/structured/latency, keeps this fast.
    tables = write_tables(tmp_path / "tables", summary=_summary(new_columns=False), **ONLY_SUMMARY)
    out, log = tmp_path / "out", tmp_path / "report.log"
    run = [sys.executable, script, "--tables-dir", str(tables), "--out-dir", str(out),
           "--formats", "png", "svg", "--dpi", "40", "--log", str(log)]
    # Both at once: each pays for importing torch (via advprune.runtime).
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in ([sys.executable, script, "--help"], run)]
    (help_out, _), (_, run_err) = (p.communicate(timeout=120) for p in procs)
    assert procs[0].returncode == 0 and "--tables-dir" in help_out and "--formats" in help_out
    assert procs[1].returncode == 0, run_err
    for path in expected_outputs(str(out), ("png", "svg")):
        assert os.path.getsize(path) > 0, path
    assert f"wrote {2 * len(FIGURES) + 3 * len(TABLES)} report files" in log.read_text()


def _record(method, sparsity, clean, aa, per_point=True, **extra):
    """A minimal evaluation record over 50 points: the first round(acc * 50) points right."""
    bits = {m: "1" * round(50 * acc) + "0" * (50 - round(50 * acc)) for m, acc in (("clean", clean), ("pgd", aa), ("autoattack", aa))}
    return {"dataset": "digits", "arch": "small_cnn", "seed": 0, "method": method, "impl": method, "sparsity_target": sparsity,
            "threat_model": {"norm": "Linf", "eps": 0.1}, "n_examples": 50, "clean_acc": clean, "pgd_acc": aa, "autoattack_acc": aa,
            "sparsity_measured": sparsity, "params_total": 100, "params_nonzero": 50, "flops_dense": 10, "flops_effective": 5,
            "layers": [{"layer": "fc", "layer_index": 0, "n_params": 100, "sparsity": sparsity}], "provenance": {"git_sha": "x", "config_hash": "c"},
            "data_sha256": "d" * 64, **({"per_point": bits, "points_sha256": "h"} if per_point else {}), **extra}


def test_aggregate_writes_intervals_and_per_point_results(tmp_path):
    import json

    aggregate = load_script("aggregate")
    paths = []
    # A dense record, one with a float32 accuracy (as torch writes it), one verified.
    verified = {**_record("hydra", 0.9, 0.8, 0.5)["per_point"], "verified": "1" * 20 + "0" * 30}
    for name, record in (("dense", _record("dense", 0.0, 0.9, 0.6)),
                         ("lwm", _record("lwm", 0.9, 0.699999988079071, 0.3)),
                         ("hydra", _record("hydra", 0.9, 0.8, 0.5, verified_acc=0.4) | {"per_point": verified})):
        path = tmp_path / f"eval/digits/small_cnn/seed0/{name}/s{record['sparsity_target']:g}.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record))
        paths.append(str(path))
    out = aggregate.outputs(str(tmp_path))
    aggregate.main(paths, [], [], [], out)
    summary = pd.read_csv(out["summary"]).set_index("method")
    # 35 of 50: Wilson centre 0.68572, half-width 0.12323.
    assert (summary.loc["lwm", "clean_acc_lo"], summary.loc["lwm", "clean_acc_hi"]) == pytest.approx((0.5625, 0.8090), abs=1e-4)
    assert summary.loc["hydra", "verified_acc"] == 0.4 and summary.loc["hydra", "verified_acc_lo"] < 0.4
    assert summary.loc[["dense", "lwm"], "verified_acc"].isna().all()  # not computed, not 0
    points = pd.read_csv(out["per_point"], dtype={"correct": str})
    assert set(points["method"]) == {"dense", "lwm", "hydra"} and set(points["metric"]) == {"clean", "pgd", "autoattack", "verified"}
    lwm_clean = points[(points["method"] == "lwm") & (points["metric"] == "clean")]["correct"].iloc[0]
    assert lwm_clean == "1" * 35 + "0" * 15
    metrics = json.loads(Path(out["metrics"]).read_text())["digits/small_cnn"]
    assert metrics["lwm@0.9"]["clean_acc_lo"] == pytest.approx(0.5625, abs=1e-4)
    assert "verified_acc" not in metrics["lwm@0.9"] and metrics["hydra@0.9"]["verified_acc"] == 0.4
    plot = pd.read_csv(tmp_path / "plots/robustness/digits_small_cnn_lwm.csv")
    assert {"clean_acc", "clean_acc_lo", "clean_acc_hi"} <= set(plot.columns) and len(plot) == 2  # dense + lwm


def test_verified_accuracy_gets_a_column_and_a_panel_once_computed():
    summary = _summary()
    assert len(figures.robustness_vs_sparsity(summary).axes) == 2 * 3  # clean, PGD, AutoAttack: not computed, no panel
    verified = summary.assign(verified_acc=0.5 * summary["autoattack_acc"], hofmn_acc=1.05 * summary["autoattack_acc"])
    fig = figures.robustness_vs_sparsity(verified)
    assert len(fig.axes) == 2 * 5 and fig.axes[3].get_title().startswith("digits / resnet18: Verified")
    assert fig.axes[4].get_title().startswith("digits / resnet18: HO-FMN")
    md = to_markdown(robustness_table(verified))
    assert "not computed" not in md and "| Verified acc. (%) | HO-FMN acc. (%) |" in md
    # small_cnn, lwm, 90 %: half of the AA accuracies 0.55 * (0.80, 0.84), beside AutoAttack's column.
    assert f"| 45.1 [31.1, 59.1] | {100 * np.mean([0.275 * 0.80, 0.275 * 0.84]):.1f} [" in md
