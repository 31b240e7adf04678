"""Content integrity from the prepared data to the findings: nothing damaged, changed or foreign is used as if it
were what the path and the config say. Each test reproduces one way it was (issue 18) and checks the one line
that now refuses it."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, load_script

from advprune.checkpoint import CheckpointError, save_model
from advprune.config import load_config
from advprune.data import PreparedDataError, data_sha256, load_meta, load_split, prepare_dataset
from advprune.models import build_model
from advprune.models.weights import layer_sparsity, prunable_weights
from advprune.pruning import masks_from_scores
from advprune.training import TrainSettings, apply_masks, build_objective, train


def _copy(digits_dir, tmp_path):
    return shutil.copytree(digits_dir, tmp_path / "digits")


def _rewrite_meta(data, **changes):
    meta = json.loads((data / "meta.json").read_text())
    meta.update(changes)
    (data / "meta.json").write_text(json.dumps(meta))


def _sha256(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- prepared data


def test_test_arrays_replaced_by_the_validation_arrays_are_refused(digits_dir, tmp_path):
    data = _copy(digits_dir, tmp_path)
    for xy in "xy":
        shutil.copy(data / f"val_{xy}.npy", data / f"test_{xy}.npy")
    with pytest.raises(PreparedDataError) as error:
        load_split(data, "test")
    message = str(error.value)
    assert message.startswith(f"{data / 'test_x.npy'}: its sha256 ") and "meta.json" in message and f"delete {data} and re-run" in message
    assert "\n" not in message
    load_split(data, "val")  # the splits left alone still load


def _labels(data, labels, dtype=np.int64, update_hash=True):
    """test_y.npy replaced by `labels` (and, as someone covering their tracks would, its hash in meta.json)."""
    y = np.load(data / "test_y.npy")
    y[: len(labels)] = labels
    np.save(data / "test_y.npy", y.astype(dtype))
    if update_hash:
        files = {**load_meta(data)["files"], "test_y.npy": _sha256(data / "test_y.npy")}
        _rewrite_meta(data, files=files)


@pytest.mark.parametrize("labels,dtype,message", [
    ([10], np.int64, "labels outside [0, 10): 10"),
    ([-1], np.int64, "labels outside [0, 10): -1"),
    ([3], np.float32, "labels of dtype float32, expected integers"),
], ids=["10", "-1", "float"])
def test_labels_outside_the_classes_are_refused_even_with_a_matching_hash(digits_dir, tmp_path, labels, dtype, message):
    data = _copy(digits_dir, tmp_path)
    _labels(data, labels, dtype)
    with pytest.raises(PreparedDataError, match="^" + re.escape(f"{data / 'test_y.npy'}: {message}")):
        load_split(data, "test")


def test_a_changed_label_file_is_refused_by_its_hash(digits_dir, tmp_path):
    data = _copy(digits_dir, tmp_path)
    _labels(data, [10], update_hash=False)
    with pytest.raises(PreparedDataError, match=f"^{data / 'test_y.npy'}: its sha256 .* not the one meta.json records"):
        load_split(data, "test")


@pytest.mark.parametrize("change,message", [
    ("images", "images of shape 359×1×8×9, expected N×1×8×8 (meta.json: channels, image_size)"),
    ("count", "360 labels for 359 images"),
    ("size", "359 examples, meta.json says 360"),
])
def test_shapes_that_do_not_match_meta_are_refused(digits_dir, tmp_path, change, message):
    data = _copy(digits_dir, tmp_path)
    if change == "images":
        x = np.load(data / "test_x.npy")
        np.save(data / "test_x.npy", np.concatenate([x, x[..., :1]], axis=-1))
    elif change == "count":
        np.save(data / "test_y.npy", np.concatenate([np.load(data / "test_y.npy"), [0]]))
    meta = load_meta(data)
    files = {**meta["files"], "test_x.npy": _sha256(data / "test_x.npy"), "test_y.npy": _sha256(data / "test_y.npy")}
    _rewrite_meta(data, files=files, splits={**meta["splits"], "test": 360 if change == "size" else meta["splits"]["test"]})
    name = "test_y.npy" if change == "count" else "test_x.npy"
    with pytest.raises(PreparedDataError) as error:
        load_split(data, "test")
    assert str(error.value).startswith(f"{data / name}: {message}"), str(error.value)


def test_a_split_carries_the_hash_of_its_files(digits_dir, tmp_path):
    test = load_split(digits_dir, "test")
    again = load_split(digits_dir, "test", n=8)
    assert test.sha256 and test.to("cpu").sha256 == test.sha256 and again.sha256 != test.sha256  # the first 8 are other data
    meta = load_meta(digits_dir)
    assert data_sha256(meta) == data_sha256(json.loads(json.dumps(meta))) and len(data_sha256(meta)) == 64


@pytest.fixture(scope="module")
def other_split(tmp_path_factory):
    """digits prepared with another split_seed: the same images, other train/val/test splits."""
    out = tmp_path_factory.mktemp("other") / "digits"
    prepare_dataset("digits", out.parent / "raw", out, 0.15, 1, download=False)
    return out


def test_training_does_not_resume_a_state_trained_on_another_split(digits_dir, other_split, tmp_path):
    settings, state = TrainSettings(epochs=1, batch_size=64, lr=0.1), tmp_path / "s.pt"
    objective = build_objective("natural", 0.1, {"steps": 1, "step_size": 0.1})
    old = load_split(digits_dir, "train", n=128)
    train(build_model("small_cnn", 10, 1, (8, 8), width=4), objective, old, load_split(digits_dir, "val", n=32), settings, 0, state)
    new = load_split(other_split, "train", n=128)
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    curve = train(model, objective, new, load_split(other_split, "val", n=32), settings, 0, state)
    assert [row["epoch"] for row in curve] == [1]  # trained on the new split, not the old state's curve handed back
    assert not all(torch.equal(initial[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- checkpoints: identity


def _config(tmp_path, digits_dir, **evaluate):
    config = yaml.safe_load((REPO / ".test/config.yaml").read_text())
    config["data"]["root"] = str(Path(digits_dir).parent)
    config["evaluate"].update({"n_examples": 8, "batch_size": 8, "latency": None, "verify": None, **evaluate})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _pruned(model, sparsity):
    """`model` pruned by weight magnitude in place; returns (masks, measured sparsity) as the prune job records them."""
    masks = masks_from_scores({k: w.detach().abs() for k, w in prunable_weights(model).items()}, sparsity)
    apply_masks(model, masks)
    rows = layer_sparsity(model)
    return masks, sum(r["sparsity"] * r["n_params"] for r in rows) / sum(r["n_params"] for r in rows)


def _checkpoint(path, meta, arch="small_cnn", width=8, method=None, sparsity=0.0, forge_measured=None):
    torch.manual_seed(0)
    model = build_model(arch, 10, 1, (8, 8), width=width)
    pruning, masks = None, None
    if method is not None:
        masks, measured = _pruned(model, sparsity) if forge_measured is None else (None, forge_measured)
        pruning = {"method": method, "impl": method, "sparsity_target": sparsity, "sparsity_measured": measured}
    save_model(path, model, arch, {"width": width}, meta, masks=masks, pruning=pruning)
    return path


# (checkpoint put at results/.../lwm/s0.9, what differs): the probes and their neighbours
FOREIGN = [
    ("width16", dict(width=16, method="lwm", sparsity=0.9), "model_options {'width': 16} (the path and config: {'width': 8})"),
    ("resnet18", dict(arch="resnet18", width=8, method="lwm", sparsity=0.9), "arch 'resnet18' (the path and config: 'small_cnn')"),
    ("dense", dict(), "method 'dense' (the path and config: 'lwm'), sparsity_target 0.0 (the path and config: 0.9)"),
    ("other target", dict(method="lwm", sparsity=0.5), "sparsity_target 0.5 (the path and config: 0.9)"),
    ("other method", dict(method="random", sparsity=0.9), "method 'random' (the path and config: 'lwm')"),
    ("forged sparsity", dict(method="lwm", sparsity=0.9, forge_measured=0.9),
     "measured sparsity 0.000 of its weights, 0.900 recorded when it was pruned"),
]


@pytest.mark.parametrize("kwargs,message", [f[1:] for f in FOREIGN], ids=[f[0] for f in FOREIGN])
def test_evaluation_refuses_a_checkpoint_that_is_not_the_model_of_its_path(digits_dir, tmp_path, kwargs, message):
    model = _checkpoint(tmp_path / "model.pt", load_meta(digits_dir), **kwargs)
    out = tmp_path / "s0.9.json"
    with pytest.raises(CheckpointError) as error:
        load_script("evaluate").cli(["--config", _config(tmp_path, digits_dir), "--dataset", "digits", "--arch", "small_cnn", "--model", str(model),
                                 "--method", "lwm", "--sparsity", "0.9", "--out", str(out)])
    assert str(error.value).startswith(f"{model}: not the model this job expects: {message}"), str(error.value)
    assert "\n" not in str(error.value) and not out.exists()


def test_a_checkpoint_of_its_path_passes_the_identity_check(digits_dir, tmp_path):
    from advprune.checkpoint import load_model
    from advprune.identity import check_model, expected_identity

    config = load_config(_config(tmp_path, digits_dir))
    path = _checkpoint(tmp_path / "model.pt", load_meta(digits_dir), method="lwm", sparsity=0.9)
    model, ckpt = load_model(path)
    check_model(path, model, ckpt, expected_identity(config, "small_cnn", "lwm", 0.9), load_meta(digits_dir))
    # a structured method that stopped short of its target records what it reached: that is what is compared
    ckpt["pruning"] = {**ckpt["pruning"], "sparsity_target": 0.99}
    check_model(path, model, ckpt, expected_identity(config, "small_cnn", "lwm", 0.99), load_meta(digits_dir))


def test_a_checkpoint_made_on_another_split_is_refused(digits_dir, other_split, tmp_path):
    from advprune.checkpoint import load_model
    from advprune.identity import check_model, expected_identity

    config = load_config(_config(tmp_path, digits_dir))
    path = _checkpoint(tmp_path / "model.pt", load_meta(other_split))
    model, ckpt = load_model(path)
    other = data_sha256(load_meta(other_split))[:12]
    with pytest.raises(CheckpointError, match=f"^{path}: not the model this job expects: made on digits with the data {other}"):
        check_model(path, model, ckpt, expected_identity(config, "small_cnn", "dense", 0.0), load_meta(digits_dir))


def test_finetune_and_prune_refuse_a_checkpoint_that_is_not_their_input(digits_dir, tmp_path):
    from advprune.config import finetune_params, prune_params
    from advprune.identity import expected_identity

    config = load_config(_config(tmp_path, digits_dir))
    dense = _checkpoint(tmp_path / "dense.pt", load_meta(digits_dir))
    pruned = _checkpoint(tmp_path / "pruned.pt", load_meta(digits_dir), method="lwm", sparsity=0.9)
    with pytest.raises(CheckpointError, match=f"^{dense}: not the model this job expects: method 'dense' \\(the path and config: 'lwm'\\)"):
        load_script("finetune").main(str(dense), str(digits_dir), 0, finetune_params(config, "lwm", dataset="digits"), str(tmp_path / "f.pt"),
                                 str(tmp_path / "f.csv"), str(tmp_path / "f.state.pt"), expect=expected_identity(config, "small_cnn", "lwm", 0.9))
    with pytest.raises(CheckpointError, match=f"^{pruned}: not the model this job expects: method 'lwm' \\(the path and config: 'dense'\\)"):
        load_script("prune").main(str(pruned), str(digits_dir), 0.5, 0, prune_params(config, "lwm", dataset="digits"), str(tmp_path / "p.pt"),
                              str(tmp_path / "p.json"), expect=expected_identity(config, "small_cnn", "lwm", 0.5))
    assert not any(tmp_path.glob("[fp].*"))


def test_a_pruned_checkpoint_carries_its_identity_through_fine_tuning_to_evaluation(digits_dir, tmp_path):
    """Structured (a physically smaller network, measured against the dense architecture) from the prune job on."""
    from advprune.checkpoint import load_model
    from advprune.config import finetune_params, prune_params, validate
    from advprune.identity import check_model, expected_identity

    config = load_config(_config(tmp_path, digits_dir))
    config["prune"]["methods"]["l1_filter"] = {}
    config["finetune"].update(epochs=1)
    config = validate(config)
    expect = expected_identity(config, "small_cnn", "l1_filter", 0.5)
    dense = _checkpoint(tmp_path / "dense.pt", load_meta(digits_dir))
    load_script("prune").main(str(dense), str(digits_dir), 0.5, 0, prune_params(config, "l1_filter", dataset="digits"), str(tmp_path / "p.pt"),
                          str(tmp_path / "p.json"), expect=expect)
    load_script("finetune").main(str(tmp_path / "p.pt"), str(digits_dir), 0, finetune_params(config, "l1_filter", dataset="digits"), str(tmp_path / "f.pt"),
                             str(tmp_path / "f.csv"), str(tmp_path / "f.state.pt"), expect=expect)
    model, ckpt = load_model(tmp_path / "f.pt")
    measured = json.loads((tmp_path / "p.json").read_text())["sparsity_measured"]
    assert ckpt["structured"] and ckpt["pruning"] == {"method": "l1_filter", "impl": "l1_filter", "sparsity_target": 0.5, "sparsity_measured": measured}
    assert ckpt["data"] == {"dataset": "digits", "sha256": data_sha256(load_meta(digits_dir))}
    check_model(tmp_path / "f.pt", model, ckpt, expect, load_meta(digits_dir))


def test_a_pruned_network_is_refused_as_the_start_of_pretraining(digits_dir, tmp_path):
    from advprune.checkpoint import load_start_model

    path = _checkpoint(tmp_path / "model.pt", load_meta(digits_dir), method="lwm", sparsity=0.9)
    state = torch.load(path, weights_only=True)["state_dict"]  # as a plain state dict, the form RobustBench's files have
    torch.save(state, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match=r"plain.pt: 90.0 % of its conv and linear weights are zero: the start must be the dense model"):
        load_start_model(tmp_path / "plain.pt", "small_cnn", {"width": 8}, load_meta(digits_dir))


def test_evaluate_refuses_more_examples_than_the_split_has_before_any_work(digits_dir, tmp_path, capsys):
    model = _checkpoint(tmp_path / "model.pt", load_meta(digits_dir))
    with pytest.raises(SystemExit) as stop:
        load_script("evaluate").cli(["--config", _config(tmp_path, digits_dir, n_examples=400), "--dataset", "digits", "--arch", "small_cnn",
                                 "--model", str(model), "--out", str(tmp_path / "e.json")])
    assert stop.value.code == ("advprune: config key 'evaluate.n_examples': 400 is more than the 359 examples in the test split of digits "
                               f"({Path(digits_dir) / 'meta.json'}; null takes the whole split)")
    assert not (tmp_path / "e.json").exists()


# ---------------------------------------------------------------- records: aggregate


N = 20


def _record(method="lwm", sparsity=0.9, clean=15, pgd=10, aa=8, **changes):
    bits = {m: "1" * k + "0" * (N - k) for m, k in (("clean", clean), ("pgd", pgd), ("autoattack", aa))}
    record = {"dataset": "digits", "arch": "small_cnn", "seed": 0, "method": method, "impl": method, "sparsity_target": sparsity,
              "sparsity_measured": sparsity, "threat_model": {"norm": "Linf", "eps": 0.1}, "n_examples": N,
              "clean_acc": clean / N, "pgd_acc": pgd / N, "autoattack_acc": aa / N, "verified_acc": None,
              "points_sha256": "p" * 64, "data_sha256": "a" * 64, "per_point": bits, "layers": [], "provenance": {"config_hash": "c"}}
    return {**record, **changes}


def _aggregate(tmp_path, records):
    aggregate = load_script("aggregate")
    paths = []
    for relative, record in records.items():
        path = tmp_path / "results" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))
        paths.append(str(path))
    out = aggregate.outputs(str(tmp_path))
    aggregate.main(paths, [], [], [], out)
    return out


LWM = "eval/digits/small_cnn/seed0/lwm/s0.9.json"
BAD_RECORDS = [
    ("no autoattack_acc", _record(autoattack_acc=None), "autoattack_acc is missing"),
    ("per_point too short", _record(per_point={**_record()["per_point"], "pgd": "1" * 10}),
     f"per_point['pgd'] has 10 points, n_examples is {N}"),
    ("per_point contradicts accuracy", _record(per_point={**_record()["per_point"], "autoattack": "1" * 15 + "0" * 5}),
     "per_point['autoattack'] has 15 of 20 points right, autoattack_acc 0.4 says 8"),
    ("robust but wrong", _record(per_point={**_record()["per_point"], "pgd": "0" * 10 + "1" * 10}),
     "per_point['pgd'] has points counted robust that clean counts wrong"),
    ("no per_point", {k: v for k, v in _record().items() if k != "per_point"}, "per_point is missing"),
    ("verified without its points", _record(verified_acc=0.2), "per_point['verified'] is missing"),
    ("n_examples zero", _record(n_examples=0), "n_examples 0 is not a positive count"),
    ("accuracy above one", _record(clean_acc=1.5), "clean_acc 1.5 is not an accuracy"),
    ("another model's record", _record(sparsity=0.5), "sparsity_target 0.5, the path says 0.9"),
]


@pytest.mark.parametrize("record,message", [b[1:] for b in BAD_RECORDS], ids=[b[0] for b in BAD_RECORDS])
def test_aggregate_refuses_a_record_that_contradicts_itself_or_its_path(tmp_path, record, message):
    with pytest.raises(CheckpointError) as error:
        _aggregate(tmp_path, {"eval/digits/small_cnn/seed0/dense/s0.json": _record("dense", 0.0), LWM: record})
    assert str(error.value).startswith(f"{tmp_path / 'results' / LWM}: {message}"), str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "tables/summary.csv").exists()


def test_aggregate_refuses_records_made_on_other_data_or_settings(tmp_path):
    dense = _record("dense", 0.0)
    for change, message in ((dict(data_sha256="b" * 64), "made on the digits data bbbbbbbbbbbb, "),
                            (dict(provenance={"config_hash": "d"}), "evaluated with the settings d, ")):
        with pytest.raises(CheckpointError) as error:
            _aggregate(tmp_path, {"eval/digits/small_cnn/seed0/dense/s0.json": dense, LWM: _record(**change)})
        assert str(error.value).startswith(f"{tmp_path / 'results' / LWM}: {message}"), str(error.value)


def test_aggregate_accepts_consistent_records(tmp_path):
    verified = {**_record()["per_point"], "verified": "1" * 5 + "0" * 15}
    out = _aggregate(tmp_path, {"eval/digits/small_cnn/seed0/dense/s0.json": _record("dense", 0.0, verified_acc=0.25, per_point=verified),
                                LWM: _record(clean_acc=0.75000001)})  # float32 accuracies round back to whole points
    assert len(open(out["summary"]).read().splitlines()) == 3


def test_the_report_refuses_per_point_results_that_contradict_the_summary(tmp_path):
    import pandas as pd

    from advprune.report.points import PointIndex

    rows = pd.DataFrame([{**{k: v for k, v in _record().items() if k not in ("per_point", "threat_model", "layers", "provenance")}}])
    points = pd.DataFrame([{"table": "summary", "dataset": "digits", "arch": "small_cnn", "seed": 0, "method": "lwm", "sparsity_target": 0.9,
                            "points_sha256": "p", "metric": "autoattack", "correct": "1" * 15 + "0" * 5}])
    message = "per_point.csv: summary digits/small_cnn/seed0/lwm/s0.9 autoattack: 15 of 20 points right, autoattack_acc 0.4 of 20 points says 8"
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        PointIndex(points).model("summary", rows, "autoattack_acc")
