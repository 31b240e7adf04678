"""The training fast path on a GPU: bf16 autocast and channels_last memory layout.

In bf16 (under autocast): the convolutions and matrix products of the training step's forward and backward
passes, including every PGD iteration of the training attack.
Kept in fp32:
  * parameters, gradients, optimizer state and the weight update (autocast keeps fp32 master weights);
  * the adversarial iterate x_adv, its signed step and its projection onto the eps-ball and [0, 1]: bf16 has
    8 bits of mantissa, too few to resolve a 2/255 step next to a pixel value of 1;
  * losses, softmaxes, KL divergences and BatchNorm statistics (autocast runs them in fp32), PwoA's HSIC (float64);
  * everything that measures a model: evaluation (clean, PGD, AutoAttack), the per-epoch validation that selects
    checkpoints, the sensitivity analysis and the pruning criteria. These run outside autocast, and TF32 is
    switched off process-wide (advprune.runtime.configure_torch), so "fp32" means fp32.
fp16 is not offered: without per-step loss scaling the attack's input gradients underflow to zero in fp16,
sign(0) takes no step, and the attack silently weakens. bf16 has fp32's exponent range.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class FastPath:
    device_type: str = "cpu"
    bf16: bool = False
    channels_last: bool = False

    @classmethod
    def resolve(cls, device: torch.device | str, precision: str = "fp32", channels_last: bool | str = False) -> FastPath:
        """`precision` auto: bf16 on a CUDA GPU that has it, fp32 elsewhere (bf16 on a CPU works but is slow);
        `channels_last` auto: on CUDA, where cuDNN's tensor-core kernels want NHWC."""
        device = torch.device(device)
        if precision not in PRECISIONS:
            raise ValueError(f"fast_path.precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        cuda = device.type == "cuda"
        if precision == "auto":
            bf16 = cuda and torch.cuda.is_bf16_supported()
        else:
            bf16 = precision == "bf16"
            if bf16 and cuda and not torch.cuda.is_bf16_supported():
                raise ValueError(f"fast_path.precision bf16: {torch.cuda.get_device_name(device)} has no bf16; use fp32")
        return cls(device.type, bf16, cuda if channels_last == "auto" else bool(channels_last))

    def describe(self) -> dict:
        return {"precision": "bf16" if self.bf16 else "fp32", "channels_last": self.channels_last}

    def prepare(self, model: nn.Module) -> nn.Module:
        """Convert the model's 4-d weights to NHWC in place (checkpoints are saved contiguous either way)."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
