"""Standard training augmentation on the device: random crop after zero padding, random horizontal flip.

What torchvision's `RandomCrop(size, padding=crop)` and `RandomHorizontalFlip()` do per image (CIFAR's
standard recipe, used by HYDRA, HARP, PwoA and MRPF's training code), done here on a whole uint8 batch where
it already lies (GPU or CPU), without a data-loader process. Every random number comes from the generator
passed in: the training loop passes its per-epoch generator (seeded from seed and epoch), so a run resumed
after a kill draws the same crops and flips as an uninterrupted one and ends with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    crop: int = 0  # zero padding on each side before a crop back to the original size; 0 = no crop
    flip: bool = False  # horizontal flip with probability 1/2

    @classmethod
    def from_params(cls, params: dict | None) -> Augmentation | None:
        """The config's `data.augmentation.<dataset>` entry; None when it changes nothing."""
        aug = cls(**params) if params else cls()
        return aug if aug.crop or aug.flip else None

    def describe(self) -> str:
        parts = ([f"random crop (padding {self.crop} px)"] if self.crop else []) + (["horizontal flip"] if self.flip else [])
        return " + ".join(parts) or "none"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """x: N×C×H×W on the generator's device; returns a new batch of the same shape and dtype."""
        n, _, h, w = x.shape
        device = generator.device if generator is not None else x.device
        if self.crop:
            p = self.crop
            padded = F.pad(x, (p, p, p, p))
            top = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=device).to(x.device)
            left = torch.randint(0, 2 * p + 1, (n,), generator=generator, device=device).to(x.device)
            rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # N×1×H×1
            cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # N×1×1×W
            images = torch.arange(n, device=x.device)[:, None, None, None]
            channels = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
            x = padded[images, channels, rows, cols]
        if self.flip:
            flipped = torch.rand(n, generator=generator, device=device).to(x.device) < 0.5
            x = torch.where(flipped[:, None, None, None], x.flip(3), x)
        return x
