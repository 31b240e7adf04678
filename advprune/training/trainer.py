"""The epoch loop shared by pretraining and fine-tuning, resumable after a kill.

Resume: after every epoch the full training state (model, optimizer, scheduler, curve) is written atomically
to `resume_path`, which lies outside Snakemake's declared outputs (Snakemake deletes those when a job fails).
Every epoch re-seeds the RNGs from (seed, epoch), so a run resumed from epoch k draws exactly the numbers an
uninterrupted run draws: same seed, same final weights (the training split's augmentation,
advprune.data.augment, draws from that epoch's generator too). The state carries a fingerprint of the settings
and of the data (the splits' `sha256`); a state written under other settings or on other data is ignored rather
than resumed. A state that cannot be read (a torn copy,
a full disk) is moved aside to `<resume_path>.unreadable` with a warning and training starts from epoch 0: it
is never half-used, and it cannot block the job on every re-run.

Loop options (TrainSettings) that reproduce the official HYDRA/HARP training loop (inspire-group/hydra train.py,
trainer/adv.py, utils/schedules.py; intellisec/harp keeps them):
  - `schedule: hydra_cosine`: the learning rate of epoch e (0-based) is lr * 0.5 * (1 + cos((e - 1) / E * pi)),
    set once per epoch. It is the official cosine with its one-epoch shift: the first epoch runs at 0.90 lr for
    E = 5, the second at lr, the last at 0.35 lr (E = 5) or 0.024 lr (E = 20); with E = 1 its only epoch has
    lr 0 (cos(-pi)), as in the official code, so one epoch trains nothing but BatchNorm statistics. `cosine` is torch's
    CosineAnnealingLR stepped per epoch, lr * 0.5 * (1 + cos(e / E * pi)): over 5 epochs it gives 79 % of the
    official schedule's total learning rate and ends 3.6x lower (0.095 lr; neither reaches 0).
  - `batchnorm: hydra`: BatchNorm running statistics are updated as in the official adversarial trainer. Every
    step first forwards the clean batch in train mode (the official `output = model(images)`, there only for the
    training accuracy), and TRADES forwards it once more after the adversarial batch (its KL target is a forward
    pass of its own, `softmax(model(x_natural))`). The running statistics therefore see 3 clean batches per
    adversarial one in TRADES, 1:1 in PGD-AT and MART (HARP's trainer), where `batchnorm: loss` updates them only
    with the forwards the loss needs (TRADES 1:1, PGD-AT 0:1). Natural and certified training make no extra pass
    (the official base and CROWN-IBP trainers compute their loss on that forward). The extra passes run without
    gradient: in train mode BatchNorm normalises with the batch's own statistics, so their outputs equal the
    loss's clean forward and the gradient is the official one. They are no attack calls (curve column
    `attack_calls` counts the training attack's gradient steps only); their time is in `train_seconds`.
  - `keep: best_val_robust` (or `best_val_clean`): the model ends with the weights of the epoch of the highest
    validation PGD (clean) accuracy, as the official code's model_best.pth.tar, selected here on the validation
    split (the official code selects on the test set). `last` keeps the last epoch.
  - `epoch_steps`: optimizer steps per epoch (null: one pass over the training split). A schedule written for
    CIFAR-10 (391 steps of 128 per epoch) runs step for step on a smaller dataset with `epoch_steps: 391`: each
    epoch draws consecutive shuffled passes until it has made its steps, and the learning rate still changes
    once per epoch.
Measured (benchmarks/parity.py's setting: the default network, 5 fine-tuning epochs, 4 seeds, standard AutoAttack
on the 359 test points): fine-tuning with the official loop (TRADES, hydra_cosine, batchnorm hydra, weight decay
1e-4, keep best_val_robust) instead of the default config's section gives HYDRA at 99 % +3.8 points [-0.3, +7.5]
and LWM at 90 % +0.8 [-3.4, +4.7] (paired bootstrap over points and seeds); with it both land inside the
interval of a port of the official loop (README, Benchmarks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from advprune.attacks.pgd import PGD
from advprune.checkpoint import CheckpointError, load_torch, save_torch
from advprune.runtime import progress, seed_everything
from advprune.training.fast import FastPath
from advprune.training.losses import Objective

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # cosine | hydra_cosine | constant | cyclic_step
    cycle: int = 3  # cyclic_step: lr restarts every `cycle` epochs and drops x0.1 every cycle/3 epochs (PwoA's ADMM phase)
    batchnorm: str = "loss"  # loss | hydra: which forwards update BatchNorm's running statistics (module docstring)
    keep: str = "last"  # last | best_val_robust | best_val_clean: the epoch whose weights the model ends with
    epoch_steps: int | None = None  # optimizer steps per epoch; None = one pass over the training split

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.batchnorm not in BATCHNORM:
            raise ValueError(f"unknown batchnorm handling {self.batchnorm!r}; known: {', '.join(BATCHNORM)}")
        if self.keep not in KEEP:
            raise ValueError(f"unknown keep {self.keep!r}; known: {', '.join(KEEP)}")
        if self.epoch_steps is not None and not (isinstance(self.epoch_steps, int) and self.epoch_steps >= 1):
            raise ValueError(f"epoch_steps must be null or an integer >= 1, not {self.epoch_steps!r}")


SCHEDULES = ("cosine", "hydra_cosine", "constant", "cyclic_step")
BATCHNORM = ("loss", "hydra")
KEEP = {"last": None, "best_val_robust": "val_robust_acc", "best_val_clean": "val_clean_acc"}  # -> the curve column selected on


def learning_rate_factor(settings: TrainSettings, epoch: int) -> float:
    """The learning rate of 0-based `epoch` as a fraction of settings.lr."""
    if settings.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / max(settings.epochs, 1)))
    if settings.schedule == "hydra_cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / max(settings.epochs, 1)))
    if settings.schedule == "cyclic_step":
        return 0.1 ** ((epoch % settings.cycle) // max(settings.cycle // 3, 1))
    return 1.0


def _fingerprint(settings: TrainSettings, extra: dict) -> str:
    blob = json.dumps({"settings": asdict(settings), **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


BUDGET_COLUMNS = {"steps": "optimizer_steps", "attack_calls": "attack_calls", "train_seconds": "train_seconds"}


def curve_budget(curve: list[dict]) -> dict:
    """What a training run spent, summed over its curve: epochs, optimizer steps, gradient steps of the training
    attack, seconds of the updates (validation excluded). The records carry it so that a comparison can check
    that its arms had the same budget."""
    out = {"epochs": len(curve)}
    for column, key in BUDGET_COLUMNS.items():
        out[key] = sum(row.get(column, 0) for row in curve)
    return out


class TrainingDiverged(RuntimeError):
    """Training produced non-finite weights or loss: the job stops, no model is saved (nothing NaN reaches a record)."""


def _refuse_divergence(model: nn.Module, loss: float, desc: str, epoch: int) -> None:
    broken = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if broken or not math.isfinite(loss):
        where = f"{len(broken)} parameters ({', '.join(broken[:3])}{', ...' if len(broken) > 3 else ''}) are not finite" if broken else f"loss {loss}"
        raise TrainingDiverged(f"{desc}: training diverged in epoch {epoch + 1}: {where}; lower the learning rate, or ramp eps over more epochs "
                               "for a certified objective")


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    """Zero the pruned weights in place (masks: parameter name -> bool or 0/1 float tensor, True/1 = kept)."""
    if not masks:
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask if mask.dtype == params[name].dtype else mask.to(params[name].dtype))


def training_step(model: nn.Module, objective: Objective, optimizer, x, y, fast: FastPath, masks=None,
                  batchnorm: str = "loss") -> tuple[torch.Tensor, torch.Tensor]:
    """One update: the objective (its attack included) under the fast path's autocast, backward outside it as
    autocast wants, the step, then the masks. Returns (loss, logits), still on the device.
    `batchnorm: hydra` adds the official trainer's clean forwards before and after the objective's (module docstring)."""
    before, after = objective.hydra_clean_passes if batchnorm == "hydra" else (0, 0)
    with fast.autocast():
        x = fast.inputs(x)
        with torch.no_grad():
            for _ in range(before):
                model(x)
        loss, logits = objective(model, x, y)
        with torch.no_grad():
            for _ in range(after):
                model(x)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    apply_masks(model, masks)
    return loss, logits


@torch.no_grad()
def accuracy(model: nn.Module, split, batch_size: int = 512) -> float:
    was_training = model.training
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in split.batches(batch_size))
    model.train(was_training)
    return correct / max(len(split), 1)


def robust_accuracy(model: nn.Module, split, attack: PGD, batch_size: int = 512) -> float:
    robust = 0
    for x, y in split.batches(batch_size):
        robust += int(attack(model, x, y)[1].sum())
    return robust / max(len(split), 1)


def _epoch_batches(train_split, settings: TrainSettings, shuffle: torch.Generator, n_batches: int):
    """The epoch's `n_batches` training batches: one shuffled pass, or with `epoch_steps` as many consecutive passes
    (each shuffled anew by the epoch's generator) as the steps need, the last one cut short."""
    made = 0
    while made < n_batches:
        for batch in train_split.batches(settings.batch_size, shuffle=True, generator=shuffle, augment=True):
            yield batch
            made += 1
            if made == n_batches:
                return


def _read_resume_state(path: str | os.PathLike, desc: str) -> dict | None:
    """The resume state at `path`, or None when there is none or it is unreadable (then moved aside)."""
    if not os.path.exists(path):
        return None
    try:
        state = load_torch(path)
        if not isinstance(state, dict):
            raise CheckpointError(path, f"not a resume state (a {type(state).__name__})")
    except CheckpointError as error:
        aside = f"{path}.unreadable"
        os.replace(path, aside)
        log.warning("%s: resume state %s: %s; moved aside to %s, training starts from epoch 0", desc, path, error.reason, aside)
        return None
    return state


def train(
    model: nn.Module,
    objective: Objective,
    train_split,
    val_split,
    settings: TrainSettings,
    seed: int,
    resume_path: str | os.PathLike,
    val_attack: PGD | None = None,
    masks: dict[str, torch.Tensor] | None = None,
    fingerprint_extra: dict | None = None,
    desc: str = "train",
    param_groups: list[dict] | None = None,
    keep_best: str | None = None,
    fast_path: dict | None = None,
) -> list[dict]:
    """Train in place; returns the per-epoch curve rows. With `masks`, pruned weights stay exactly zero.

    `param_groups`: optimizer groups (default: every parameter with requires_grad, the settings' lr).
    `keep_best`: a curve column (e.g. "val_robust_acc"); the model ends with the weights of the epoch where it
    was highest (checkpoint selection on the validation split).
    The objective takes part through optional hooks (see `Objective`): `epoch_start(epoch, n_batches)` runs before
    each epoch's updates, `epoch_end(model, epoch) -> dict` after
    each epoch's updates and adds curve columns; `state_dict()`/`load_state_dict()` carry its state across a resume.
    `fast_path`: {precision, channels_last} of the training step (advprune.training.fast; default fp32, NCHW);
    validation always runs in fp32.
    """
    fast = FastPath.resolve(next(model.parameters()).device, **(fast_path or {}))
    if settings.schedule == "hydra_cosine" and settings.epochs == 1:
        log.warning("%s: hydra_cosine over 1 epoch runs it at lr 0 (the official schedule is shifted by one epoch): nothing is learned; "
                    "use more epochs or schedule: cosine", desc)
    fast.prepare(model)
    params = param_groups or [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    # set once per epoch, as every official loop does (CosineAnnealingLR stepped per epoch gives the `cosine` factors)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: learning_rate_factor(settings, epoch))
    keep_best = keep_best or KEEP[settings.keep]
    if keep_best == "val_robust_acc" and val_attack is None:
        raise ValueError(f"{desc}: keep {settings.keep!r} needs a validation attack")
    augmentation = getattr(train_split, "augmentation", None)
    # the data too: a state trained on another split (data.val_fraction, split_seed) is not this run's
    fingerprint = _fingerprint(settings, {"seed": seed, "objective": objective.name, "fast_path": fast.describe(),
                                          "augmentation": augmentation.describe() if augmentation else "none",
                                          "data": [getattr(split, "sha256", None) for split in (train_split, val_split)],
                                          **(fingerprint_extra or {})})

    curve: list[dict] = []
    start_epoch = 0
    best: dict | None = None  # {"epoch", "value", "model"} for keep_best
    state = _read_resume_state(resume_path, desc)
    if state is not None:
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            objective.load_state_dict(state["objective"])
            curve, start_epoch, best = state["curve"], state["epoch"] + 1, state["best"]
            log.info("%s: resumed from %s after epoch %d", desc, resume_path, state["epoch"] + 1)
        else:
            log.info("%s: ignoring resume state %s written under other settings", desc, resume_path)
    if masks:  # converted once, not on every step
        by_name = dict(model.named_parameters())
        masks = {name: mask.to(by_name[name].dtype) for name, mask in masks.items()}
    apply_masks(model, masks)
    if settings.schedule == "hydra_cosine" and settings.epochs == 1:
        log.warning("%s: hydra_cosine over 1 epoch sets lr 0 (the official formula's cos(-pi)): only BatchNorm statistics will change", desc)
    if settings.epochs > start_epoch:
        log.info("%s: %s on %s; augmentation: %s", desc, fast.describe(), fast.device_type, augmentation.describe() if augmentation else "none")

    for epoch in range(start_epoch, settings.epochs):
        seed_everything(seed * 100_003 + epoch)
        shuffle = torch.Generator(device=train_split.x.device).manual_seed(seed * 100_003 + epoch)
        model.train()
        started = time.time()
        # running sums stay on the device: reading them every step would stall the GPU until it catches up
        total_loss = torch.zeros((), dtype=torch.float64, device=train_split.x.device)
        total_correct = torch.zeros((), dtype=torch.int64, device=train_split.x.device)
        seen = 0
        n_batches = settings.epoch_steps or -(-len(train_split) // settings.batch_size)
        objective.epoch_start(epoch, n_batches)
        batches = _epoch_batches(train_split, settings, shuffle, n_batches)
        for x, y in progress(batches, f"{desc} epoch {epoch + 1}/{settings.epochs}", total=n_batches):
            loss, logits = training_step(model, objective, optimizer, x, y, fast, masks, settings.batchnorm)
            total_loss += loss.detach().double() * len(y)
            total_correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        # the epoch's budget: optimizer steps, training-attack gradient steps, and the seconds of the updates alone
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": float(total_loss) / seen, "train_acc": int(total_correct) / seen, "steps": n_batches,
               "attack_calls": n_batches * getattr(objective, "attack_steps", 0), "train_seconds": time.time() - started}
        _refuse_divergence(model, row["train_loss"], desc, epoch)
        row.update(objective.epoch_end(model, epoch))
        row["val_clean_acc"] = accuracy(model, val_split)
        row["val_robust_acc"] = robust_accuracy(model, val_split, val_attack) if val_attack else float("nan")
        row["seconds"] = time.time() - started
        curve.append(row)
        if keep_best and (best is None or row[keep_best] > best["value"]):
            best = {"epoch": epoch + 1, "value": row[keep_best], "model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        log.info(
            "%s epoch %d/%d: loss %.4f train acc %.3f val clean %.3f val robust %.3f (%.1fs)",
            desc, epoch + 1, settings.epochs, row["train_loss"], row["train_acc"], row["val_clean_acc"], row["val_robust_acc"], row["seconds"],
        )
        save_torch(
            {
                "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "objective": objective.state_dict(), "curve": curve, "best": best,
            },
            resume_path,
        )
    if best is not None:
        model.load_state_dict(best["model"])
        log.info("%s: kept epoch %d (best %s %.4f)", desc, best["epoch"], keep_best, best["value"])
    if fast.channels_last:  # methods post-process the trained weights (view, flatten): hand back plain NCHW
        model.to(memory_format=torch.contiguous_format)
    return curve
