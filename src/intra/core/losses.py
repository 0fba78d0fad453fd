"""The inpainting loss (paper section 4): L = L2 + alpha * L_GMS + beta * L_SSIM.

L2 is the mean squared pixel error; L_GMS the mean over three scales (the patch, then 2x average
pooled twice: 16, 8 and 4 px for K = 16) of the mean of 1 - GMS; L_SSIM = 1 - SSIM with an 11 x 11
Gaussian window, sigma 1.5. alpha = beta = 0.01 by default (RIAD's weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .similarity import gms_map, ssim


def msgms_loss(pred: torch.Tensor, target: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """Multi-scale GMS loss: (B, C, K, K) x 2 -> scalar, mean over scales of mean(1 - GMS)."""
    total = pred.new_zeros(())
    for level in range(scales):
        if level:
            pred, target = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
        total = total + (1 - gms_map(pred, target)).mean()
    return total / scales


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM: (B, C, K, K) x 2 -> scalar."""
    return 1 - ssim(pred, target).mean()


def inpainting_loss(
    pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.01, beta: float = 0.01
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Combined loss on patches (B, C, K, K): returns (loss, detached terms {"l2", "gms", "ssim"}).

    A term whose weight is 0 is not computed (cheaper ablations).
    """
    l2 = F.mse_loss(pred, target)
    loss = l2
    parts = {"l2": l2.detach()}
    if alpha:
        gms = msgms_loss(pred, target)
        loss = loss + alpha * gms
        parts["gms"] = gms.detach()
    if beta:
        structural = ssim_loss(pred, target)
        loss = loss + beta * structural
        parts["ssim"] = structural.detach()
    return loss, parts
