"""A port of inspire-group/hydra's training loop, written after reading the official code, for benchmarks/parity.py.

It imports nothing from advprune's training or pruning code: the point is an independent second implementation
to hold ours against. What it follows, operation for operation (inspire-group/hydra at 9d41c93):
  - models/layers.py: SubnetConv / SubnetLinear carry `popup_scores`; GetSubnet sorts |s| and zeroes the
    int((1 - k) n) lowest (k = fraction kept), straight-through backward; the layers multiply weight by the mask in
    every forward (here they replace the Conv2d / Linear modules of our network, with its weights);
  - utils/model.py prepare_model / freeze_vars / unfreeze_vars: prune mode trains the scores and BatchNorm (weights
    and biases of every other module frozen), finetune mode trains weights, biases and BatchNorm with the scores
    frozen; initialize_scaled_score: s = sqrt(6 / fan_in) W / max|W| (`--scaled-score-init`);
  - utils/schedules.py: SGD over model.parameters() (weight decay on everything that has a gradient), cosine
    lr * 0.5 * (1 + cos((epoch - 1) / epochs * pi)) set at the start of every epoch;
  - trainer/adv.py + utils/adv.py trades_loss: per batch, `output = model(images)` in train mode, then TRADES: the
    KL-PGD attack in eval mode from x + 0.001 N(0, I) (the clean target recomputed in every attack step), back to
    train mode, CE(model(x), y) + beta / B * KL_sum(log_softmax(model(x_adv)) || softmax(model(x)));
  - train.py: validation after every epoch with utils/eval.py adv (pgd_whitebox: uniform random start, steps of
    the training attack, CE), model_best = the first epoch with the highest adversarial accuracy; the pruning run
    hands its last checkpoint (checkpoint.pth.tar) to fine-tuning (get_compact_net_adv_train.sh); the LWM baseline
    is fine-tuning of the pretrained network with --scaled-score-init (README "weight based pruning");
  - seeds: torch.manual_seed(seed) at the start of each run (pruning and fine-tuning are separate runs).
What differs, by necessity: the data are digits tensors in a DataLoader (batch 128, shuffled, no augmentation, as
the pipeline's digits config); validation, and so model_best, uses our validation split (the official code uses
the test set); the threat model and training attack are the pipeline's (digits: eps 0.1, its steps and step
size; the official CIFAR-10 values are eps 0.031, 10 steps of 0.0078); no --is-semisup data.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.autograd as autograd
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class GetSubnet(autograd.Function):
    @staticmethod
    def forward(ctx, scores, k):
        out = scores.clone()
        _, idx = scores.flatten().sort()
        j = int((1 - k) * scores.numel())
        flat_out = out.flatten()  # a view: writing it writes out
        flat_out[idx[:j]] = 0
        flat_out[idx[j:]] = 1
        return out

    @staticmethod
    def backward(ctx, g):
        return g, None


class SubnetConv(nn.Conv2d):
    def set_prune_rate(self, k):
        self.k = k

    def forward(self, x):
        adj = GetSubnet.apply(self.popup_scores.abs(), self.k)
        return F.conv2d(x, self.weight * adj, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SubnetLinear(nn.Linear):
    def set_prune_rate(self, k):
        self.k = k

    def forward(self, x):
        adj = GetSubnet.apply(self.popup_scores.abs(), self.k)
        return F.linear(x, self.weight * adj, self.bias)


def to_subnet(model: nn.Module, k: float) -> nn.Module:
    """A copy of `model` whose Conv2d / Linear layers are subnet layers with the same weights (scores: Kaiming
    uniform, as SubnetConv.__init__; overwritten by the scaled init or a checkpoint)."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Conv2d):
                layer = SubnetConv(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding, child.dilation,
                                   child.groups, child.bias is not None)
            elif isinstance(child, nn.Linear):
                layer = SubnetLinear(child.in_features, child.out_features, child.bias is not None)
            else:
                continue
            layer.load_state_dict(child.state_dict())
            layer.popup_scores = nn.Parameter(torch.empty(layer.weight.shape))
            nn.init.kaiming_uniform_(layer.popup_scores, a=math.sqrt(5))
            layer.set_prune_rate(k)
            setattr(module, child_name, layer)
    return model


def _set_requires_grad(model: nn.Module, var_name: str, value: bool, freeze_bn: bool = False) -> None:
    """freeze_vars (value False: BatchNorm exempt unless freeze_bn) and unfreeze_vars of utils/model.py."""
    for module in model.modules():
        param = getattr(module, var_name, None)
        if param is None:
            continue
        if value or not isinstance(module, nn.BatchNorm2d) or freeze_bn:
            param.requires_grad = value


def prepare_model(model: nn.Module, exp_mode: str) -> None:
    if exp_mode == "prune":
        _set_requires_grad(model, "popup_scores", True)
        _set_requires_grad(model, "weight", False)
        _set_requires_grad(model, "bias", False)
    elif exp_mode == "finetune":
        _set_requires_grad(model, "popup_scores", False)
        _set_requires_grad(model, "weight", True)
        _set_requires_grad(model, "bias", True)
    else:
        raise ValueError(exp_mode)


def initialize_scaled_score(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "popup_scores"):
            n = nn.init._calculate_correct_fan(m.popup_scores, "fan_in")
            m.popup_scores.data = math.sqrt(6 / n) * m.weight.data / torch.max(torch.abs(m.weight.data))


def cosine_lr(optimizer, lr: float, epochs: int, epoch: int) -> float:
    a = lr * 0.5 * (1 + np.cos((epoch - 1) / epochs * np.pi))
    for group in optimizer.param_groups:
        group["lr"] = a
    return float(a)


def trades_loss(model, x_natural, y, optimizer, step_size, epsilon, perturb_steps, beta, clip_min=0.0, clip_max=1.0):
    criterion_kl = nn.KLDivLoss(reduction="sum")
    model.eval()
    batch_size = len(x_natural)
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, clip_min, clip_max)
    model.train()
    x_adv = torch.clamp(x_adv, clip_min, clip_max).detach()
    optimizer.zero_grad()
    logits = model(x_natural)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / batch_size) * criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x_natural), dim=1))
    return loss_natural + beta * loss_robust


def pgd_whitebox(model, x, y, epsilon, num_steps, step_size, clip_min=0.0, clip_max=1.0):
    x_pgd = x.detach() + torch.empty_like(x).uniform_(-epsilon, epsilon)
    for _ in range(num_steps):
        x_pgd.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_pgd), y)
        (grad,) = torch.autograd.grad(loss, [x_pgd])
        x_pgd = x_pgd.detach() + step_size * grad.sign()
        x_pgd = torch.clamp(x + torch.clamp(x_pgd - x, -epsilon, epsilon), clip_min, clip_max)
    return x_pgd.detach()


def validate_adv(model, val_x, val_y, attack: dict, batch_size: int = 128) -> float:
    """utils/eval.py adv: PGD accuracy in percent."""
    model.eval()
    correct = 0
    for i in range(0, len(val_y), batch_size):
        x, y = val_x[i : i + batch_size], val_y[i : i + batch_size]
        x_adv = pgd_whitebox(model, x, y, attack["eps"], attack["steps"], attack["step_size"])
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1) == y).sum())
    return 100.0 * correct / len(val_y)


def run(model: nn.Module, exp_mode: str, data: dict, args: dict, seed: int, scaled_score_init: bool = False) -> tuple[nn.Module, list[dict]]:
    """One train.py run on a subnet model (exp_mode prune | finetune). `data`: train_x, train_y, val_x, val_y (float
    tensors in [0, 1], labels); `args`: epochs, lr, momentum, wd, batch_size, beta, attack {eps, steps, step_size}.
    Returns (the model train.py's next stage uses: the last epoch after pruning, model_best after fine-tuning, the
    curve of lr and validation accuracy per epoch)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    prepare_model(model, exp_mode)
    if scaled_score_init:
        initialize_scaled_score(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args["lr"], momentum=args["momentum"], weight_decay=args["wd"])
    loader = DataLoader(TensorDataset(data["train_x"], data["train_y"]), batch_size=args["batch_size"], shuffle=True)
    attack = args["attack"]
    best_prec1, best_state, curve = 0.0, copy.deepcopy(model.state_dict()), []
    for epoch in range(args["epochs"]):
        lr = cosine_lr(optimizer, args["lr"], args["epochs"], epoch)
        model.train()
        for images, target in loader:
            model(images)  # output = model(images): the training accuracy's forward (BatchNorm statistics move)
            loss = trades_loss(model, images, target, optimizer, attack["step_size"], attack["eps"], attack["steps"], args["beta"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        prec1 = validate_adv(model, data["val_x"], data["val_y"], attack)
        if prec1 > best_prec1:
            best_prec1, best_state = prec1, copy.deepcopy(model.state_dict())
        curve.append({"epoch": epoch + 1, "lr": lr, "val_robust_acc": prec1 / 100})
    if exp_mode == "finetune":
        model.load_state_dict(best_state)
    return model, curve


def subnet_to_dense(model: nn.Module, plain: nn.Module) -> nn.Module:
    """Load the subnet model's weights times its masks (utils/model.py subnet_to_dense) into `plain`, the network
    with ordinary layers, for evaluation beside ours."""
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith("popup_scores"):
            continue
        state[name] = value
    for name, module in model.named_modules():
        if hasattr(module, "popup_scores"):
            state[f"{name}.weight"] = module.weight.data * GetSubnet.apply(module.popup_scores.data.abs(), module.k)
    plain.load_state_dict(state)
    return plain


def masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter name -> kept (bool) of every subnet layer."""
    return {f"{name}.weight": GetSubnet.apply(m.popup_scores.data.abs(), m.k).bool()
            for name, m in model.named_modules() if hasattr(m, "popup_scores")}
