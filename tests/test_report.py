"""The report rule: figures and tables from synthetic aggregated tables."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from advprune.report import expected_outputs, make_report
from advprune.report import figures
from advprune.report.style import DENSE_COLOR, KNOWN_COLORS, method_color, method_colors
from advprune.report.tables import INPUT_COLUMNS, robustness_table, tex_escape, to_latex, to_markdown

REPO = Path(__file__).resolve().parents[1]
METHODS = ("lwm", "lwm_global", "random")
SPARSITIES = (0.5, 0.9, 0.99)
SEEDS = (0, 1)
ARCH_LAYERS = {
    "small_cnn": ["conv1", "conv2", "conv3", "fc"],
    "resnet18": ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(2) for c in (1, 2)]
    + ["layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut", "fc"],
}
FLOPS = 1_000_000
PARAMS = 100_000


def _accuracy(method: str, sparsity: float, seed: int, arch: str) -> tuple[float, float, float]:
    """Clean / PGD / AA accuracy with a known value for small_cnn, lwm, 90 %: clean 0.80 and 0.84 over the seeds."""
    drop = {"dense": 0.0, "lwm": 0.2, "lwm_global": 0.15, "random": 0.6, "hydra": 0.1}[method] * sparsity**3
    clean = 0.92 - drop + 0.02 * seed - (0.05 if arch == "resnet18" else 0.0)
    if (arch, method, sparsity) == ("small_cnn", "lwm", 0.9):
        clean = 0.80 + 0.04 * seed
    return clean, 0.6 * clean, 0.55 * clean


def _summary(methods=METHODS) -> pd.DataFrame:
    rows = []
    for arch in ARCH_LAYERS:
        for seed in SEEDS:
            for method, sparsity in [("dense", 0.0)] + [(m, s) for m in methods for s in SPARSITIES]:
                clean, pgd, aa = _accuracy(method, sparsity, seed, arch)
                rows.append(dict(
                    dataset="digits", arch=arch, seed=seed, method=method, sparsity_target=sparsity,
                    sparsity_measured=sparsity + 0.001 * seed * (method != "dense"), params_total=PARAMS,
                    params_nonzero=round(PARAMS * (1 - sparsity)), flops_dense=FLOPS,
                    flops_effective=FLOPS * (1 - sparsity), clean_acc=clean, pgd_acc=pgd, autoattack_acc=aa,
                    n_examples=500, norm="Linf", eps=0.1,
                ))
    return pd.DataFrame(rows, columns=INPUT_COLUMNS["summary"])


def _layers() -> pd.DataFrame:
    rows = []
    for arch, layers in ARCH_LAYERS.items():
        for seed in SEEDS:
            for method in METHODS:
                for sparsity in SPARSITIES:
                    for i, layer in enumerate(layers):
                        # Global pruning spares the first and last layers, as real global magnitude pruning tends to.
                        edge = method == "lwm_global" and i in (0, len(layers) - 1)
                        value = sparsity * (0.3 if edge else 1 + 0.1 * (i % 3 - 1) * (1 - sparsity))
                        rows.append(dict(dataset="digits", arch=arch, seed=seed, method=method,
                                         sparsity_target=sparsity, layer=layer, layer_index=i,
                                         n_params=1000 * (i + 1), sparsity=min(value + 0.002 * seed, 1.0)))
    return pd.DataFrame(rows, columns=INPUT_COLUMNS["layer_sparsity"])


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


def write_tables(directory: Path, **overrides: pd.DataFrame | None) -> Path:
    """All four input tables; an override of None leaves that file out."""
    tables = {"summary": _summary(), "layer_sparsity": _layers(), "sensitivity": _sensitivity(),
              "training_curves": _curves(), **overrides}
    directory.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if df is not None:
            df.to_csv(directory / f"{name}.csv", index=False)
    return directory


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    tables = write_tables(tmp / "tables")
    written = make_report(str(tables), str(tmp / "out"), formats=("png", "pdf"), dpi=80)
    return tmp, written


def test_writes_every_expected_output(report):
    tmp, written = report
    expected = expected_outputs(str(tmp / "out"), ("png", "pdf"))
    assert written == expected
    assert len(expected) == 4 * 2 + 3
    for path in expected:
        assert os.path.getsize(path) > 0, path
    for path in (p for p in expected if p.endswith(".png")):
        image = matplotlib.image.imread(path)
        height, width = image.shape[:2]
        assert 150 < height < 4000 and 300 < width < 4000, (path, image.shape)
        assert image[..., :3].std() > 0.01, f"{path} is blank"
    for path in (p for p in expected if p.endswith(".pdf")):
        assert Path(path).read_bytes().startswith(b"%PDF")


def test_tables_hold_means_and_stds_over_seeds(report):
    tmp, _ = report
    md = (tmp / "out/tables/robustness.md").read_text()
    tex = (tmp / "out/tables/robustness.tex").read_text()
    csv = pd.read_csv(tmp / "out/tables/robustness.csv")
    # small_cnn, lwm, 90 %: clean 80 % and 84 % -> mean 82.00, sample std 2.83.
    row = csv[(csv["arch"] == "small_cnn") & (csv["method"] == "lwm") & (csv["sparsity_target_pct"] == 90)]
    assert len(row) == 1
    assert row["clean_pct"].iloc[0] == pytest.approx(82.0)
    assert row["clean_pct_std"].iloc[0] == pytest.approx(2.8284, abs=1e-4)
    assert row["flops_reduction"].iloc[0] == pytest.approx(10.0)
    assert row["params_nonzero"].iloc[0] == 10_000
    assert ("| digits | small_cnn | lwm | 90 | 90.05 | 2 | 82.00 ± 2.83 | 49.20 ± 1.70 | 45.10 ± 1.56 | 10,000 | 10.0× |"
            in md)
    assert r"digits & small\_cnn & lwm & 90 & 90.05 & 2 & 82.00 $\pm$ 2.83 &" in tex
    assert r"lwm\_global" in tex and "lwm_global" not in tex
    assert tex.startswith(r"\begin{tabular}") and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"Clean acc. (\%)" in tex
    # Two archs, each: dense + 3 methods x 3 sparsities.
    assert len(csv) == 2 * (1 + 3 * 3)
    assert (csv.groupby("arch")["method"].first() == "dense").all(), "dense must lead each block"
    assert md.count("\n") == 2 + len(csv)


def test_single_seed_shows_no_std():
    summary = _summary()
    table = robustness_table(summary[summary["seed"] == 0])
    assert (table["n_seeds"] == 1).all()
    assert "±" not in to_markdown(table) and r"\pm" not in to_latex(table)


def test_reruns_are_byte_identical(tmp_path):
    # The summary alone: one real figure and the placeholders are enough to catch embedded timestamps.
    tables = write_tables(tmp_path / "tables", layer_sparsity=None, sensitivity=None, training_curves=None)
    first, second = (make_report(str(tables), str(tmp_path / out), formats=("png", "pdf", "svg"), dpi=50)
                     for out in ("a", "b"))
    for a, b in zip(first, second):
        assert Path(a).read_bytes() == Path(b).read_bytes(), a
    # Timestamps have one-second resolution, so equal bytes alone could be luck: check they are absent.
    pdf, svg = (Path(tmp_path / "a/figures" / f"robustness_vs_sparsity.{ext}").read_bytes() for ext in ("pdf", "svg"))
    assert b"/CreationDate" not in pdf and b"dc:date" not in svg


def _labelled_colors(fig) -> dict[str, tuple]:
    """Legend label -> RGBA of every labelled data line in every panel of a figure."""
    colors = {}
    for ax in fig.axes:
        artists = [(c.get_label(), c.lines[0]) for c in ax.containers if c.lines[0] is not None]
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
    assert method_color("some_new_method") not in {DENSE_COLOR, *KNOWN_COLORS.values()}


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


def test_sparsity_axis_separates_90_from_99():
    fig = figures.robustness_vs_sparsity(_summary())
    fig.canvas.draw()
    ax = fig.axes[0]
    x50, x90, x99 = (ax.transData.transform((s, 50))[0] for s in (50, 90, 99))
    # On a linear axis 90 -> 99 would be under a quarter of 50 -> 90.
    assert x99 - x90 > x90 - x50 > 0
    assert [t.get_text() for t in ax.get_xticklabels()] == ["50", "90", "99"]


def test_missing_or_empty_optional_tables_give_placeholders(tmp_path, caplog):
    tables = write_tables(tmp_path / "tables", sensitivity=None, layer_sparsity=_layers().iloc[:0])
    with caplog.at_level(logging.WARNING, logger="advprune.report"):
        written = make_report(str(tables), str(tmp_path / "out"), formats=("png",), dpi=50)
    assert written == expected_outputs(str(tmp_path / "out"), ("png",))
    assert all(os.path.getsize(p) > 0 for p in written)
    assert "figure sensitivity: no rows in sensitivity.csv" in caplog.text
    assert "figure layer_sparsity: no rows in layer_sparsity.csv" in caplog.text


def test_table_missing_a_column_is_an_error(tmp_path):
    tables = write_tables(tmp_path / "tables", summary=_summary().drop(columns="pgd_acc"))
    with pytest.raises(ValueError, match="pgd_acc"):
        make_report(str(tables), str(tmp_path / "out"), formats=("png",), dpi=50)


def test_tex_escape():
    assert tex_escape("lwm_global 50% & #1 {x}") == r"lwm\_global 50\% \& \#1 \{x\}"


def test_cli(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    script = str(REPO / "scripts" / "report.py")
    # The summary alone keeps this fast; the other figures are covered in-process above.
    tables = write_tables(tmp_path / "tables", layer_sparsity=None, sensitivity=None, training_curves=None)
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
    assert "wrote 11 report files" in log.read_text()
