"""CPU inference through oneDNN: linear layers with pre-packed weights and a fused activation.

On x86 CPUs PyTorch's default fp32 matrix product goes through MKL; on the AMD Zen 5 cores of
CPU-2 (docs/benchmarks.md) that runs at ~200 GFLOP/s on 2 cores, while oneDNN with its weights
laid out once in its own blocked format reaches ~470. `pack_for_cpu` returns an inference-only copy
of the network whose `nn.Linear` layers call oneDNN with packed weights, and whose `Mlp`s run
Linear + GELU (exact, erf) or Linear + ReLU as one oneDNN call. Same function and parameters; no
autograd. Where the torch build lacks the oneDNN operator, the plain network is returned unchanged.
"""

from __future__ import annotations

import copy
import functools
import logging

import torch
from torch import nn

from ..core.model import InpaintingTransformer, Mlp

log = logging.getLogger(__name__)

# Rows (windows x tokens) the weights are laid out for: a typical CPU chunk, 64 windows of 49 tokens.
_ROWS_HINT = 64 * 49


class PackedLinear(nn.Module):
    """y = act(x W^T + b) through oneDNN with W packed once; `act` is "none", "gelu" or "relu"."""

    def __init__(self, linear: nn.Linear, act: str = "none", dtype: torch.dtype = torch.float32):
        super().__init__()
        weight = linear.weight.detach().to(dtype)
        self.register_buffer("weight", torch.ops.mkldnn._reorder_linear_weight(weight, _ROWS_HINT))
        self.register_buffer("bias", linear.bias.detach().to(dtype))
        self.act, self.dtype = act, dtype
        self.algorithm = "none" if act == "gelu" else ""  # "none": exact GELU, not the tanh form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x.to(self.dtype), self.weight, self.bias, self.act, [], self.algorithm
        )


@functools.cache
def available(dtype: torch.dtype = torch.float32) -> bool:
    """True if this torch build and CPU can run oneDNN's packed linear operator in `dtype`.

    bf16 packing needs bf16 instructions (AVX-512 BF16 or AVX-NE-CONVERT); without them oneDNN
    refuses the weights, and bf16 falls back to autocast on the plain network.
    """
    ops = torch.ops.mkldnn
    if not (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    ):
        return False
    try:
        weight = ops._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), 8)
        ops._linear_pointwise(torch.zeros(2, 8, dtype=dtype), weight, None, "none", [], "")
    except RuntimeError:
        return False
    return True


def _fused_activation(act: nn.Module) -> str:
    """oneDNN's name for an activation it can fuse into the linear layer before it ("" if none)."""
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return "gelu"
    return "relu" if isinstance(act, nn.ReLU) else ""


def pack_for_cpu(model: InpaintingTransformer, dtype: torch.dtype = torch.float32) -> InpaintingTransformer:
    """An inference-only copy of `model` (on the CPU) with oneDNN linear layers; `model` itself is untouched.

    With dtype=bfloat16 the matrix products run in bf16 (fp32 accumulation) while the residual
    stream, LayerNorms and softmax stay fp32, as under autocast. The head stays fp32: its output is
    the reconstruction that scoring subtracts from the image, and bf16's 8 significant bits would
    round it by up to 0.4 %, the size of the differences a faint defect leaves; it reads few tokens,
    so its cost is small.
    """
    if not available(dtype):
        log.info("oneDNN packed linear (%s) not available on this CPU or torch build: using the plain network", dtype)
        return model
    packed = copy.deepcopy(model).eval()
    for module in list(packed.modules()):
        act = _fused_activation(module.act) if isinstance(module, Mlp) else ""
        if act:
            module.fc1 = PackedLinear(module.fc1, act, dtype)
            module.act = nn.Identity()
    if available(torch.float32):
        packed.head = PackedLinear(packed.head, "none", torch.float32)
    for module in list(packed.modules()):
        for name, child in module.named_children():
            if type(child) is nn.Linear:
                setattr(module, name, PackedLinear(child, "none", dtype))
    for parameter in packed.parameters():
        parameter.requires_grad_(False)
    return packed
