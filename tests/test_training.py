import math
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from advprune.attacks import PGD
from advprune.checkpoint import load_torch
from advprune.config import ConfigError, finetune_params, validate
from advprune.data import load_split
from advprune.models import build_model
from advprune.pruning import PruneContext, build_method
from advprune.training import FastPath, TrainSettings, apply_masks, build_objective, curve_budget, from_params, train, training_step
from advprune.training.losses import Natural
from advprune.training.trainer import TrainingDiverged, accuracy

from conftest import PYTHON, REPO, env_with_repo

ATTACK = {"steps": 3, "step_size": 0.04}


@pytest.mark.parametrize("name", ["natural", "pgd_at", "trades", "mart"])
def test_objectives_give_finite_losses_and_gradients(name, digits_dir):
    split = load_split(digits_dir, "train", n=64)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    loss, logits = build_objective(name, 0.1, ATTACK)(model, split.float_x(), split.y)
    loss.backward()
    assert torch.isfinite(loss) and logits.shape == (64, 10)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.training  # the attack ran in eval mode and handed the model back in train mode


def test_adversarial_training_makes_the_model_more_robust_than_natural_training(digits_dir, tmp_path):
    train_split, val = load_split(digits_dir, "train"), load_split(digits_dir, "val")
    attack = PGD(0.1, 0.03, 5)
    robust = {}
    for name in ("natural", "pgd_at"):
        torch.manual_seed(0)
        model = build_model("small_cnn", 10, 1, (8, 8), width=8)
        settings = TrainSettings(epochs=6, batch_size=64, lr=0.05)
        curve = train(model, build_objective(name, 0.1, {"steps": 5, "step_size": 0.03}), train_split, val, settings, 0, tmp_path / name, attack)
        robust[name] = curve[-1]["val_robust_acc"]
    assert robust["pgd_at"] > robust["natural"] + 0.2


def test_masked_training_keeps_pruned_weights_exactly_zero(digits_dir, tmp_path):
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    masks = build_method("lwm").prune(model, 0.9, PruneContext()).masks
    apply_masks(model, masks)
    split = load_split(digits_dir, "train", n=128)
    train(model, build_objective("pgd_at", 0.1, ATTACK), split, split, TrainSettings(epochs=2, batch_size=32, lr=0.1, weight_decay=0.01), 0, tmp_path / "s.pt", masks=masks)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all()
        assert (params[name][mask] != 0).any()


def _pretrain_cmd(tmp_path, config, tag):
    return [PYTHON, str(REPO / "scripts/pretrain.py"), "--config", str(config), "--dataset", "digits", "--arch", "small_cnn",
            "--out-model", str(tmp_path / f"{tag}.pt"), "--out-curve", str(tmp_path / f"{tag}.csv"), "--resume", str(tmp_path / f"{tag}.state.pt")]


def test_pretraining_resumes_after_sigkill_with_the_same_final_weights(digits_dir, tmp_path):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["data"]["root"] = str(Path(digits_dir).parent)
    config["models"]["small_cnn"] = {"width": 8}
    config["pretrain"].update(epochs=4, batch_size=128)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = env_with_repo()

    subprocess.run(_pretrain_cmd(tmp_path, tmp_path / "config.yaml", "straight"), check=True, env=env, cwd=tmp_path)

    state = tmp_path / "killed.state.pt"
    proc = subprocess.Popen(_pretrain_cmd(tmp_path, tmp_path / "config.yaml", "killed"), env=env, cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and load_torch(state)["epoch"] >= 1:  # two epochs done, two to go
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed.pt").exists()
    killed_at = load_torch(state)["epoch"]
    assert killed_at < 3

    resumed = subprocess.run(_pretrain_cmd(tmp_path, tmp_path / "config.yaml", "killed"), env=env, cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {state} after epoch {killed_at + 1}" in resumed.stderr
    a, b = load_torch(tmp_path / "straight.pt")["state_dict"], load_torch(tmp_path / "killed.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight.csv").read_text().splitlines()[-1].split(",")[:6] == (tmp_path / "killed.csv").read_text().splitlines()[-1].split(",")[:6]
    assert not state.exists()  # cleaned up once the outputs exist


def test_resume_state_from_other_settings_is_not_used(digits_dir, tmp_path):
    split = load_split(digits_dir, "train", n=64)
    objective = build_objective("natural", 0.1, ATTACK)
    state = tmp_path / "state.pt"
    train(build_model("small_cnn", 10, 1, (8, 8), width=4), objective, split, split, TrainSettings(epochs=1, batch_size=32, lr=0.1), 0, state)
    curve = train(build_model("small_cnn", 10, 1, (8, 8), width=4), objective, split, split, TrainSettings(epochs=2, batch_size=32, lr=0.2), 0, state)
    assert [row["epoch"] for row in curve] == [1, 2]  # started over, not resumed at epoch 2


@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_an_unreadable_resume_state_is_moved_aside_and_training_starts_fresh(digits_dir, tmp_path, caplog, damage):
    split = load_split(digits_dir, "train", n=64)
    settings = TrainSettings(epochs=2, batch_size=32, lr=0.1)
    torch.manual_seed(0)
    fresh = build_model("small_cnn", 10, 1, (8, 8), width=4)
    train(fresh, build_objective("natural", 0.1, ATTACK), split, split, settings, 0, tmp_path / "fresh.state.pt")
    state = tmp_path / "state.pt"
    written = (tmp_path / "fresh.state.pt").read_bytes()
    state.write_bytes({"truncated": written[: len(written) // 2], "empty": b"", "text": b"epoch: 1\n"}[damage])
    damaged = state.read_bytes()

    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    curve = train(model, build_objective("natural", 0.1, ATTACK), split, split, settings, 0, state)
    assert [row["epoch"] for row in curve] == [1, 2]
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert (tmp_path / "state.pt.unreadable").read_bytes() == damaged  # kept for inspection, out of the way
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "moved aside" in warning and str(state) in warning


def test_a_prune_phase_with_an_unreadable_resume_state_starts_fresh(digits_dir, tmp_path):
    from conftest import prune_context, small_model

    context = prune_context(digits_dir, n_train=64, resume_prefix=str(tmp_path / "job"))
    (tmp_path / "job.scores.state.pt").write_bytes(b"PK\x03\x04torn")
    curve = context.fit(small_model(), build_objective("natural", 0.1, ATTACK), TrainSettings(epochs=1, batch_size=32, lr=0.1), "scores",
                        validate_robust=False)
    assert [row["epoch"] for row in curve] == [1]
    assert (tmp_path / "job.scores.state.pt.unreadable").read_bytes() == b"PK\x03\x04torn"
    assert context.resume_states() == [str(tmp_path / "job.scores.state.pt")]  # the fresh one; the damaged file is not removed with it


def test_a_job_runs_deterministic_kernels_without_loading_the_compiler_stack():
    # torch.use_deterministic_algorithms would import torch._inductor (and _dynamo): 1.7 s of every job's start.
    probe = ("import sys, torch; from advprune.runtime import configure_torch; configure_torch(1); "
             "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
             "torch.get_num_threads(), 'torch._inductor' in sys.modules, 'torch._dynamo' in sys.modules)")
    run = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, cwd=REPO, env=env_with_repo(), check=True)
    assert run.stdout.split() == ["True", "True", "1", "False", "False"], run.stdout + run.stderr


def test_hydra_cosine_is_the_official_shifted_schedule_set_once_per_epoch(digits_dir, tmp_path):
    split = load_split(digits_dir, "train", n=64)
    curves = {}
    for schedule in ("hydra_cosine", "cosine"):
        settings = TrainSettings(epochs=5, batch_size=32, lr=0.1, schedule=schedule)
        curves[schedule] = [row["lr"] for row in train(build_model("small_cnn", 10, 1, (8, 8), width=4), build_objective("natural", 0.1, ATTACK),
                                                        split, split, settings, 0, tmp_path / f"{schedule}.pt")]
    # inspire-group/hydra utils/schedules.py cosine_schedule, called as lr_policy(epoch) with epoch = 0, 1, ...
    assert curves["hydra_cosine"] == pytest.approx([0.1 * 0.5 * (1 + math.cos((e - 1) / 5 * math.pi)) for e in range(5)])
    assert curves["cosine"] == pytest.approx([0.1 * 0.5 * (1 + math.cos(e / 5 * math.pi)) for e in range(5)])  # CosineAnnealingLR per epoch
    assert sum(curves["hydra_cosine"]) / sum(curves["cosine"]) == pytest.approx(1.27, abs=0.005)  # the "27 % more"
    assert curves["hydra_cosine"][-1] / curves["cosine"][-1] == pytest.approx(3.62, abs=0.01)  # "ends 3.6x higher"


def test_one_epoch_of_hydra_cosine_learns_nothing_and_says_so(digits_dir, tmp_path, caplog):
    split = load_split(digits_dir, "train", n=64)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, build_objective("natural", 0.1, ATTACK), split, split, TrainSettings(epochs=1, batch_size=32, lr=0.1, schedule="hydra_cosine",
                                                                                    weight_decay=0.0), 0, tmp_path / "s.pt", desc="finetune")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert "finetune: hydra_cosine over 1 epoch runs it at lr 0" in caplog.text


@pytest.mark.parametrize("name, loss_mode, hydra_mode", [("trades", 2, 4), ("pgd_at", 1, 2), ("mart", 2, 3), ("natural", 1, 1)])
def test_hydra_batchnorm_updates_the_statistics_with_the_official_trainers_forwards(digits_dir, name, loss_mode, hydra_mode):
    # Train-mode forwards per step, counted by BatchNorm itself: TRADES in the official adv trainer forwards the clean
    # batch three times (output = model(images), its CE logits, its KL target) and the adversarial one once.
    split = load_split(digits_dir, "train", n=32)
    x, y = split.float_x(), split.y
    for mode, forwards in (("loss", loss_mode), ("hydra", hydra_mode)):
        model = build_model("small_cnn", 10, 1, (8, 8), width=4)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        objective = build_objective(name, 0.1, ATTACK)
        loss, _ = training_step(model, objective, optimizer, x, y, FastPath.resolve(torch.device("cpu")), batchnorm=mode)
        assert int(model[1].num_batches_tracked) == forwards, (name, mode)
        assert torch.isfinite(loss)


def test_budget_columns_count_optimizer_and_attack_steps_not_the_extra_clean_passes(digits_dir, tmp_path):
    split = load_split(digits_dir, "train", n=96)
    settings = TrainSettings(epochs=2, batch_size=32, lr=0.1, batchnorm="hydra", epoch_steps=5)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    curve = train(model, build_objective("trades", 0.1, ATTACK), split, split, settings, 0, tmp_path / "s.pt")
    assert [(row["steps"], row["attack_calls"]) for row in curve] == [(5, 5 * ATTACK["steps"])] * 2  # 5 steps: one pass of 3 and 2 more
    assert curve_budget(curve)["optimizer_steps"] == 10 and all(row["train_seconds"] > 0 for row in curve)


class _KilledInEpoch2(Natural):
    """Natural training that dies at the start of the second epoch, as a job killed there would."""

    def epoch_start(self, epoch, n_batches):
        if epoch == 1:
            raise KeyboardInterrupt


def test_epoch_steps_draw_consecutive_passes_and_resume_to_the_same_weights(digits_dir, tmp_path):
    split = load_split(digits_dir, "train", n=64)
    settings = TrainSettings(epochs=2, batch_size=32, lr=0.1, epoch_steps=5, schedule="hydra_cosine", batchnorm="hydra", keep="best_val_clean")
    models = {}
    for run in ("straight", "killed"):
        torch.manual_seed(0)
        models[run] = build_model("small_cnn", 10, 1, (8, 8), width=4)
        if run == "killed":
            with pytest.raises(KeyboardInterrupt):
                train(models[run], _KilledInEpoch2(), split, split, settings, 0, tmp_path / f"{run}.pt")
            first_epoch = load_torch(tmp_path / f"{run}.pt")["curve"][0]
            torch.manual_seed(0)
            models[run] = build_model("small_cnn", 10, 1, (8, 8), width=4)
        curve = train(models[run], Natural(), split, split, settings, 0, tmp_path / f"{run}.pt")
        assert [row["steps"] for row in curve] == [5, 5]
    # resumed: the killed run's first epoch, its timings included
    assert (curve[0]["train_seconds"], curve[0]["seconds"]) == (first_epoch["train_seconds"], first_epoch["seconds"])
    assert all(torch.equal(a, b) for a, b in zip(models["straight"].state_dict().values(), models["killed"].state_dict().values()))


def test_keep_best_ends_with_the_best_validation_epoch(digits_dir, tmp_path):
    train_split, val = load_split(digits_dir, "train", n=128), load_split(digits_dir, "val", n=64)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    settings = TrainSettings(epochs=4, batch_size=32, lr=0.5, schedule="constant", keep="best_val_clean")
    curve = train(model, build_objective("natural", 0.1, ATTACK), train_split, val, settings, 0, tmp_path / "s.pt")
    best = max(row["val_clean_acc"] for row in curve)
    assert accuracy(model, val) == pytest.approx(best)
    with pytest.raises(ValueError, match="needs a validation attack"):
        settings = TrainSettings(epochs=1, batch_size=32, lr=0.1, keep="best_val_robust")
        train(model, build_objective("natural", 0.1, ATTACK), train_split, val, settings, 0, tmp_path / "t.pt")


def test_a_diverged_run_stops_with_a_named_error_and_leaves_no_resume_state(digits_dir, tmp_path):
    """Non-finite weights would otherwise become a checkpoint and a record of chance accuracy."""
    split = load_split(digits_dir, "train", n=128)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    settings = TrainSettings(epochs=3, batch_size=32, lr=1e30, momentum=0.0, weight_decay=0.0, schedule="constant")
    with pytest.raises(TrainingDiverged, match=r"diverge: training diverged in epoch 1: .*not finite"):
        train(model, build_objective("natural", 0.1, ATTACK), split, split, settings, 0, tmp_path / "s.pt", desc="diverge")
    assert not (tmp_path / "s.pt").exists()


def test_loop_options_are_validated_and_reach_the_training_settings():
    raw = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for key in ("schedule", "batchnorm", "keep", "epoch_steps"):  # the default config sets the official loop; the schema's defaults are ours
        raw["finetune"].pop(key, None)
    config = validate(raw)
    assert {k: config["finetune"][k] for k in ("schedule", "batchnorm", "keep", "epoch_steps")} == {"schedule": "cosine", "batchnorm": "loss", "keep": "last",
                                                                                                 "epoch_steps": None}
    config["finetune"].update(schedule="hydra_cosine", batchnorm="hydra", keep="best_val_robust", epoch_steps=20)
    config["prune"]["methods"]["lwm"]["finetune"] = {"keep": "last"}
    _, settings, _ = from_params(finetune_params(config, "lwm", dataset="digits")["train"], 0.1)
    assert (settings.schedule, settings.batchnorm, settings.keep, settings.epoch_steps) == ("hydra_cosine", "hydra", "last", 20)
    _, settings, _ = from_params(finetune_params(config, "hydra", dataset="digits")["train"], 0.1)
    assert settings.keep == "best_val_robust"
    for key, bad in (("batchnorm", "frozen"), ("keep", "best"), ("epoch_steps", 0), ("schedule", "step")):
        broken = yaml.safe_load((REPO / "config/config.yaml").read_text())
        broken["finetune"][key] = bad
        with pytest.raises(ConfigError, match=f"'finetune.{key}'"):
            validate(broken)
    with pytest.raises(ValueError, match="batchnorm"):
        TrainSettings(epochs=1, batch_size=1, lr=0.1, batchnorm="frozen")
