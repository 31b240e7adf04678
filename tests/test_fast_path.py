"""The training fast path (bf16 autocast + channels_last), exercised on the CPU: what runs in bf16, what stays
fp32, and that it keeps the loop's guarantees (masks, resume to the same weights)."""

import pytest
import torch
import torch.nn as nn

from advprune.data import load_split
from advprune.models import build_model
from advprune.pruning import PruneContext, build_method
from advprune.training import TrainSettings, build_objective, train
from advprune.training.fast import FastPath
from advprune.training.losses import PGDAT

FAST = {"precision": "bf16", "channels_last": True}
ATTACK = {"steps": 3, "step_size": 0.04}


def test_auto_is_plain_fp32_on_the_cpu_and_bad_values_are_refused():
    assert FastPath.resolve("cpu", "auto", "auto").describe() == {"precision": "fp32", "channels_last": False}
    assert FastPath.resolve("cpu", "bf16", True).describe() == {"precision": "bf16", "channels_last": True}
    with pytest.raises(ValueError, match="fast_path.precision 'fp16'"):
        FastPath.resolve("cpu", "fp16")


class _Interrupt(Exception):
    pass


class _Recording(PGDAT):
    """PGD-AT that records (train mode, dtype) of the logits of every forward pass, the dtype of the adversarial
    examples and the weights' layout during training; can simulate a kill at the end of an epoch (after the
    previous epoch's resume state was written)."""

    def __init__(self, kill_after_epoch=None):
        super().__init__(build_objective("pgd_at", 0.1, ATTACK).attack)
        self.kill_after_epoch = kill_after_epoch
        self.logits, self.x_adv, self.nhwc = set(), set(), set()

    def watch(self, model: nn.Module):
        # the attack's BatchNorm-folded view shares the classifier module, so this hook sees its passes too
        model[-1].register_forward_hook(lambda m, args, out: self.logits.add((model.training, out.dtype)))
        return self

    def _in_eval(self, model, attack):
        x_adv = super()._in_eval(model, attack)
        self.x_adv.add(x_adv.dtype)
        self.nhwc.add(model[3].weight.is_contiguous(memory_format=torch.channels_last) and not model[3].weight.is_contiguous())
        return x_adv

    def epoch_end(self, model, epoch):
        if epoch == self.kill_after_epoch:
            raise _Interrupt
        return {}


def _fit(digits_dir, state, objective, masks=None, fast_path=FAST):
    split = load_split(digits_dir, "train", n=128)
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, (8, 8), width=4)
    if masks:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in masks:
                    p.mul_(masks[name])
    objective.watch(model)
    train(model, objective, split, split, TrainSettings(epochs=3, batch_size=32, lr=0.05), 0, state, masks=masks, fast_path=fast_path)
    return model


def test_training_steps_run_in_bf16_while_the_attack_iterate_and_validation_stay_fp32(digits_dir, tmp_path):
    objective = _Recording()
    model = _fit(digits_dir, tmp_path / "s.pt", objective)
    # bf16 in the training step and its attack (eval mode), fp32 in validation (eval mode, outside autocast)
    assert objective.logits == {(True, torch.bfloat16), (False, torch.bfloat16), (False, torch.float32)}
    assert objective.x_adv == {torch.float32} and objective.nhwc == {True}
    assert all(p.is_contiguous() and p.dtype == torch.float32 for p in model.parameters())  # handed back fp32 NCHW


def test_fast_path_keeps_masks_and_resumes_to_the_same_weights(digits_dir, tmp_path):
    masks = build_method("lwm").prune(build_model("small_cnn", 10, 1, (8, 8), width=4), 0.8, PruneContext()).masks
    straight = _fit(digits_dir, tmp_path / "straight.pt", _Recording(), masks)
    with pytest.raises(_Interrupt):
        _fit(digits_dir, tmp_path / "killed.pt", _Recording(kill_after_epoch=1), masks)
    resumed = _fit(digits_dir, tmp_path / "killed.pt", _Recording(), masks)
    params = dict(resumed.named_parameters())
    for name, p in straight.named_parameters():
        assert torch.equal(p, params[name]), name
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all()
