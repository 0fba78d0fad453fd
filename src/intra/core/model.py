"""The Inpainting Transformer: (window of patches, covered positions) -> the covered patches' pixels.

Paper sections 3.1-3.3: a shared linear patch embedding, the covered token replaced by a learned
inpaint token, learned local (L*L) or global (M*N) position embeddings, n pre-LN blocks with
multihead feature self-attention (MFSA: queries and keys from a D -> 2D -> D/2 MLP), symmetric
long skips (block i feeds block n+1-i), then LayerNorm, a mean over tokens (or the covered token)
and a linear map to K*K*C pixels. With `model.base_fill = smooth` (beyond the paper) the head's
pixels are a correction added to the smooth fill of each covered patch from the window's visible
pixels around it (`smooth_fill`), so the untrained network starts as a biharmonic inpainter and
learns what a smooth surface misses. This module knows nothing of files, images or training.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .smooth_fill import fill_selected

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class Mlp(nn.Module):
    """Linear -> activation (GELU, the paper's, or ReLU) -> Linear."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim_in, hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention; with `feature_qk` it is MFSA (paper section 3.2).

    MFSA computes q and k with an MLP D -> 2D -> D/2 each, so the q/k head dimension is D/(2h)
    and the logits are scaled by 1/sqrt(D/(2h)); v and the output projection stay D -> D.
    Standard MSA (feature_qk=False) uses linear q, k, v of width D.
    """

    def __init__(self, dim: int, heads: int, feature_qk: bool = True, activation: str = "gelu"):
        super().__init__()
        self.heads = heads
        if feature_qk:
            self.q = Mlp(dim, 2 * dim, dim // 2, activation)
            self.k = Mlp(dim, 2 * dim, dim // 2, activation)
        else:
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.kernel = "auto"  # see `attend`

    def forward(self, x: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); with `queries` (B, R, D), only those rows attend: -> (B, R, D)."""
        q = self.q(x if queries is None else queries)
        return self.proj(attend(q, self.k(x), self.v(x), self.heads, self.kernel))


# Windows whose attention weights are computed together on a CPU: 32 windows x 4 heads x 49 x 49
# weights are 1.2 MB, so the scores, the softmax and the weighted sum stay in the core's cache.
CPU_SLICE_WINDOWS = 32


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, kernel: str = "auto") -> torch.Tensor:
    """Multi-head attention of projected queries (B, R, Dqk), keys (B, T, Dqk) and values (B, T, D) -> (B, R, D).

    Logits are scaled by 1/sqrt(Dqk/h). kernel: "sdpa" = F.scaled_dot_product_attention (fused,
    flash); "matmul" = explicit products and softmax, CPU_SLICE_WINDOWS windows at a time; "auto" =
    matmul on a CPU, sdpa elsewhere. On a CPU the flash kernel runs its tiny 49 x 49 tiles far below
    the machine's rate and needs MFSA's narrower q/k padded to v's width; the sliced products are
    about 1.7x as fast there (docs/benchmarks.md, "Attention in cache-sized slices").
    """
    if kernel == "auto":
        kernel = "matmul" if q.device.type == "cpu" else "sdpa"
    b, r, _ = q.shape
    t = k.shape[1]
    scale = (q.shape[-1] // heads) ** -0.5
    q = q.reshape(b, r, heads, -1).transpose(1, 2)  # (B, h, R, Dqk/h)
    k = k.reshape(b, t, heads, -1).transpose(1, 2)  # (B, h, T, Dqk/h)
    v = v.reshape(b, t, heads, -1).transpose(1, 2)  # (B, h, T, D/h)
    if kernel == "sdpa":
        pad = v.shape[-1] - q.shape[-1]
        # MFSA's q/k heads are half v's width; the fused kernels need one width. Zeros appended
        # to q and k leave every q.k unchanged, and the scale stays the true width's.
        q, k = F.pad(q, (0, pad)), F.pad(k, (0, pad))
        y = F.scaled_dot_product_attention(q, k, v, scale=scale)
    elif kernel != "matmul":
        raise ValueError(f"unknown attention kernel {kernel!r}: auto, sdpa or matmul")
    else:
        # Slices of equal size near CPU_SLICE_WINDOWS: a short last slice (one image's 36 windows as
        # 32 + 4) would pay a slice's fixed cost for little work. Traced graphs keep B dynamic: one slice.
        slices = 1 if torch.compiler.is_compiling() else max(1, round(b / CPU_SLICE_WINDOWS))
        if slices == 1:
            y = _weighted_values(q, k, v, scale)
        else:
            step = math.ceil(b / slices)
            parts = [
                _weighted_values(q[i : i + step], k[i : i + step], v[i : i + step], scale) for i in range(0, b, step)
            ]
            y = torch.cat(parts)
    return y.transpose(1, 2).reshape(b, r, -1)  # (B, R, D)


def _weighted_values(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v over the last two dimensions."""
    return torch.matmul(torch.matmul(q, k.transpose(-2, -1)).mul_(scale).softmax(dim=-1), v)


class Block(nn.Module):
    """Pre-LN transformer block: y + Attn(LN(y)), then y + FFN(LN(y))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, feature_qk=cfg.attention == "mfsa", activation=cfg.activation)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = Mlp(cfg.dim, int(cfg.dim * cfg.mlp_ratio), cfg.dim, cfg.activation)

    def forward(self, x: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D); with `select` (B, T) bool, only the selected tokens' outputs (n, D).

        Every token still gives its key and value, but the queries, the output projection and the
        FFN run on the selected rows alone: exact, and in the last block of a covered-token head
        (which reads only the covered tokens) it skips most of the block's work.
        """
        if select is None:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        index, valid = selected_rows(select)
        normed = self.norm1(x)
        take = index[..., None].expand(-1, -1, x.shape[-1])
        y = x.gather(1, take) + self.attn(normed, normed.gather(1, take))  # (B, R, D)
        y = y + self.mlp(self.norm2(y))
        return y[valid]  # (n, D) in row-major order of `select`


def selected_rows(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) bool -> token indices (B, R) of each row's selected tokens, in order, padded, and (B, R) valid.

    R is the most tokens any row selects; shorter rows are padded with unselected tokens, which
    `valid` marks False, so `y[valid]` lists the selected tokens in row-major order, like `x[select]`.
    """
    counts = select.sum(dim=1)
    most = int(counts.max()) if select.numel() else 0
    order = torch.sort(select.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :most]
    valid = torch.arange(most, device=select.device) < counts[:, None]
    return order, valid


def skip_pairs(depth: int) -> list[tuple[int, int]]:
    """Long skips as (source, target), blocks numbered 1..depth: block i's output joins block depth+1-i's input.

    For 13 blocks: (1, 13), (2, 12), ..., (6, 8); block 7 is the middle. The range stops before
    a pair (i, i+1), whose target already takes the source's output directly.
    """
    return [(i, depth + 1 - i) for i in range(1, (depth + 1) // 2)]


class InpaintingTransformer(nn.Module):
    """The InTra network. Inputs are flat pixel patches; output is the covered patch's pixels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        tokens = cfg.window * cfg.window
        # "auto" is resolved at fit; a network built from an unresolved config is local.
        positions = (cfg.position_table or cfg.grid * cfg.grid) if cfg.position == "global" else tokens
        self.patch_embed = nn.Linear(cfg.patch_dim, cfg.dim)
        self.inpaint_token = nn.Parameter(torch.zeros(cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(positions, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.patch_dim)
        self.skips = skip_pairs(cfg.depth) if cfg.long_skips else []
        # Per-channel pixel statistics of the training images: inputs are standardised with them
        # and outputs mapped back, so the network works on centred values but speaks pixels.
        self.register_buffer("pixel_mean", torch.zeros(cfg.channels))
        self.register_buffer("pixel_std", torch.ones(cfg.channels))
        self._init_weights()
        if cfg.base_fill == "smooth":  # start exactly at the smooth fill: a zero correction
            nn.init.zeros_(self.head.weight)

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.inpaint_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def set_pixel_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and std (C,) of the training pixels; used when cfg.normalize_input."""
        self.pixel_mean.copy_(mean)
        self.pixel_std.copy_(std.clamp_min(1e-3))

    def _patch_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel mean and std laid out like a flat patch (C*K*K,)."""
        k2 = self.cfg.patch_size**2
        return self.pixel_mean.repeat_interleave(k2), self.pixel_std.repeat_interleave(k2)

    def embed_patches(self, patches: torch.Tensor) -> torch.Tensor:
        """Flat pixel patches (..., P) -> patch embeddings (..., D), standardised first if configured.

        Inference embeds every patch of an image once and gathers the embeddings into windows,
        instead of embedding each patch once per window that holds it (L*L times).
        """
        if self.cfg.normalize_input:
            mean, std = self._patch_stats()
            patches = (patches - mean) / std
        return self.patch_embed(patches)

    def tokens(self, x: torch.Tensor, covered: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """Window embeddings (B, T, D), covered mask (B, T) bool, positions (B, T) or None -> tokens (B, T, D).

        The covered patches' embeddings are replaced by the inpaint token (their pixels never reach
        the blocks) before the position embedding is added. `positions` indexes the global table
        (absolute grid positions); with local embeddings it is ignored and token i gets embedding i.
        """
        x = torch.where(covered[..., None], self.inpaint_token.to(x.dtype), x)
        if self.cfg.position == "global":
            if positions is None:
                raise ValueError("global position embeddings need the tokens' grid positions")
            return x + self.pos_embed[positions]  # (B, T, D)
        return x + self.pos_embed  # (B, T, D) + (T, D)

    def forward_blocks(self, x: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D) through all blocks and the long skips.

        With `select` (B, T) bool the last block computes only the selected tokens' outputs: -> (n, D).
        """
        sources = {source for source, _ in self.skips}
        targets = {target for _, target in self.skips}
        saved: list[torch.Tensor] = []
        for number, block in enumerate(self.blocks, start=1):
            if number in targets:
                x = x + saved.pop()  # last saved is the partner: pairs are nested
            x = block(x, select if number == len(self.blocks) else None)
            if number in sources:
                saved.append(x)
        return x

    def encode(
        self,
        x: torch.Tensor,
        covered: torch.Tensor,
        positions: torch.Tensor | None,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Window embeddings (B, T, D) -> block outputs (B, T, D), or the `select`ed tokens' (n, D).

        The mean head reads every token, so it always gets them all.
        """
        if self.cfg.head == "mean":
            select = None
        return self.forward_blocks(self.tokens(x, covered, positions), select)

    def head_pixels(self, pooled: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised token outputs (..., D) -> pixels (..., P): the linear head, standardisation undone.

        base: the smooth fill of the same patches (..., P) when `model.base_fill = smooth`; the head
        then gives a correction to it, in units of the pixel std.
        """
        out = self.head(pooled)
        mean, std = self._patch_stats()
        if base is not None:
            return out * std + base
        if self.cfg.normalize_input:
            out = out * std + mean
        return out

    def base_pixels(self, patches: torch.Tensor, select: torch.Tensor) -> torch.Tensor | None:
        """The smooth fill of the selected tokens from the window's pixels: (B, T, P), (B, T) bool -> (n, P).

        None unless `model.base_fill = smooth`. Each covered patch is filled from the two-pixel ring
        of its neighbours inside the window (covered neighbours are never adjacent: a lattice is at
        least 2 apart); the window's edges are its border.
        """
        if self.cfg.base_fill != "smooth":
            return None
        c, k, window = self.cfg.channels, self.cfg.patch_size, self.cfg.window
        return fill_selected(patches.float(), select, (window, window), c, k)

    def decode(self, x: torch.Tensor, select: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """Block outputs (B, T, D), selected covered tokens (B, T) bool -> their pixels (n selected, P).

        Rows of the result follow `select` in row-major order. The covered-token head reads each
        selected token's own output (given already selected, (n, D), as `encode(select=...)` returns
        them); the mean head (the paper) reads the mean over all tokens, so it inpaints one patch
        per window and `select` holds at most one token per row (none: a padding row, left out).
        base: `base_pixels` of the selected tokens, or None.
        """
        if x.dim() == 2:
            return self.head_pixels(self.norm(x), base)  # (n, P)
        if self.cfg.head == "mean":
            return self.head_pixels(self.norm(x).mean(dim=1)[select.any(dim=1)], base)  # (n, P)
        return self.head_pixels(self.norm(x[select]), base)  # (n, P)

    def forward(
        self, patches: torch.Tensor, covered: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Patches (B, L*L, K*K*C), covered mask (B, L*L) bool, positions (B, L*L) -> the covered patches' pixels (n, K*K*C).

        One covered patch per window gives (B, K*K*C). Several (`train.cover_spacing`, beyond the
        paper; the covered-token head) give one row per covered patch, in row-major mask order,
        so that `patches[covered]` are the targets.
        """
        x = self.encode(self.embed_patches(patches), covered, positions, select=covered)
        return self.decode(x, covered, self.base_pixels(patches, covered))

    def set_attention_kernel(self, kernel: str) -> None:
        """Run every block's attention with `kernel`: "auto", "sdpa" or "matmul" (see `attend`)."""
        for block in self.blocks:
            block.attn.kernel = kernel
