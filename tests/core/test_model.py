"""The network: MFSA sizes, long skips, heads, positions, fused attention, gradients."""

import pytest
import torch

from intra.config import ModelConfig
from intra.core.model import CPU_SLICE_WINDOWS, Attention, InpaintingTransformer, attend, skip_pairs
from intra.data.sampling import WindowSampler
from intra.export import WindowGraph

from conftest import tiny_config


@pytest.mark.parametrize("head, spacing", [("covered", 0), ("covered", 2), ("mean", 0)])
def test_forward_returns_the_covered_patches_in_mask_order(head, spacing):
    cfg = tiny_config(head=head)
    cfg.train.cover_spacing = spacing
    model = InpaintingTransformer(cfg.model).eval()
    batch = WindowSampler(torch.rand(2, 3, 32, 32), cfg, augment=False).sample(5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        pred = model(batch.patches, batch.covered, batch.positions)
        every = WindowGraph(model)(batch.patches, batch.covered, batch.positions)  # the exported graph
    assert pred.shape == (int(batch.covered.sum()), cfg.model.patch_dim) == batch.target.flatten(1).shape
    torch.testing.assert_close(pred, every if head == "mean" else every[batch.covered])


def make(**overrides) -> InpaintingTransformer:
    settings = dict(image_size=32, channels=3, patch_size=4, window=3, dim=32, depth=5, heads=4)
    cfg = ModelConfig(**{**settings, **overrides})
    return InpaintingTransformer(cfg)


def window_batch(model: InpaintingTransformer, batch: int = 6):
    m = model.cfg
    patches = torch.rand(batch, m.window**2, m.patch_dim)
    covered = torch.arange(m.window**2) == torch.randint(0, m.window**2, (batch, 1))  # (B, L*L) one per window
    positions = torch.randint(0, m.grid**2, (batch, m.window**2))
    return patches, covered, positions


def test_mfsa_head_dimensions():
    attn = Attention(dim=512, heads=8, feature_qk=True)
    assert [attn.q.fc1.out_features, attn.q.fc2.out_features] == [1024, 256]  # D -> 2D -> D/2
    assert [attn.k.fc1.out_features, attn.k.fc2.out_features] == [1024, 256]
    assert attn.v.out_features == 512 and attn.proj.out_features == 512
    x = torch.rand(2, 49, 512)
    q = attn.q(x).view(2, 49, 8, -1)
    v = attn.v(x).view(2, 49, 8, -1)
    assert q.shape[-1] == 32 and v.shape[-1] == 64  # q/k head dim D/2/h, v head dim D/h
    assert attn(x).shape == (2, 49, 512)


def test_standard_msa_option_uses_linear_qk():
    attn = Attention(dim=64, heads=4, feature_qk=False)
    assert isinstance(attn.q, torch.nn.Linear) and attn.q.out_features == 64


def test_skip_pairs_for_the_paper_depth():
    assert skip_pairs(13) == [(1, 13), (2, 12), (3, 11), (4, 10), (5, 9), (6, 8)]
    assert skip_pairs(3) == [(1, 3)]
    assert skip_pairs(4) == [(1, 4)]


def test_skip_pairing_in_the_forward_pass():
    """With 13 blocks, the input of block 14 - i is block 13 - i's output plus block i's output."""
    model = make(depth=13).eval()
    outputs, inputs = {}, {}
    for number, block in enumerate(model.blocks, start=1):
        block.register_forward_pre_hook(lambda mod, args, n=number: inputs.__setitem__(n, args[0]))
        block.register_forward_hook(lambda mod, args, out, n=number: outputs.__setitem__(n, out))
    with torch.no_grad():
        model(*window_batch(model))
    for i in range(1, 7):
        target = 14 - i
        torch.testing.assert_close(inputs[target], outputs[target - 1] + outputs[i])
    torch.testing.assert_close(inputs[7], outputs[6])  # the middle block has no skip


def test_long_skips_off_changes_nothing_but_the_skips():
    model = make(long_skips=False)
    assert model.skips == []


@pytest.mark.parametrize("overrides", [{}, {"head": "covered"}, {"position": "global"}, {"attention": "msa"}])
def test_every_parameter_receives_a_gradient(overrides):
    model = make(**overrides)
    patches, covered, positions = window_batch(model)
    model(patches, covered, positions).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_output_shape_and_covered_pixels_are_ignored():
    model = make().eval()
    patches, covered, positions = window_batch(model)
    out = model(patches, covered, positions)
    assert out.shape == (6, model.cfg.patch_dim)
    changed = patches.clone()
    changed[covered] = torch.rand(6, model.cfg.patch_dim)  # the covered patch itself
    torch.testing.assert_close(model(changed, covered, positions), out)


def test_global_position_table_is_grid_sized():
    model = make(position="global")
    assert model.pos_embed.shape == (64, 32)  # M*N = 8*8 entries, not (M*N)^2


@pytest.mark.parametrize("windows", [5, CPU_SLICE_WINDOWS + 7, 3 * CPU_SLICE_WINDOWS + 7])  # one slice, then three
def test_the_attention_kernels_agree(windows):
    """The fused kernel (MFSA's q/k padded to v's width) and the sliced explicit products compute one function."""
    q, k, v = torch.randn(windows, 9, 16), torch.randn(windows, 9, 16), torch.randn(windows, 9, 32)
    with torch.no_grad():
        fused = attend(q, k, v, heads=4, kernel="sdpa")
        sliced = attend(q, k, v, heads=4, kernel="matmul")
    reference = torch.stack([attention_by_loops(q[i], k[i], v[i], heads=4) for i in range(windows)])
    torch.testing.assert_close(sliced, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


def attention_by_loops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """One window's multi-head attention, head by head and query by query: (T, Dqk), (T, Dqk), (T, D) -> (T, D)."""
    out = []
    for query in range(len(q)):
        row = []
        for qh, kh, vh in zip(q[query].chunk(heads), k.chunk(heads, dim=1), v.chunk(heads, dim=1)):
            weights = torch.softmax(kh @ qh / len(qh) ** 0.5, dim=0)  # (T,)
            row.append(weights @ vh)
        out.append(torch.cat(row))
    return torch.stack(out)


def test_the_attention_kernels_agree_in_the_network():
    model = make().eval()
    batch = window_batch(model)
    with torch.no_grad():
        model.set_attention_kernel("sdpa")
        fused = model(*batch)
        model.set_attention_kernel("matmul")
        sliced = model(*batch)
    torch.testing.assert_close(fused, sliced, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention, kernel", [("mfsa", "sdpa"), ("mfsa", "matmul"), ("msa", "sdpa")])
def test_selected_outputs_of_the_last_block_equal_the_whole_blocks(attention, kernel):
    """Pruning the last block to the read tokens is exact, also when rows select different counts."""
    model = make(depth=4, attention=attention).eval()
    model.set_attention_kernel(kernel)
    x = torch.randn(5, 9, 32)
    select = torch.rand(5, 9) < 0.4
    select[0] = False  # a row that reads nothing
    select[1] = True  # a row that reads everything
    with torch.no_grad():
        whole = model.forward_blocks(x)
        pruned = model.forward_blocks(x, select)
    assert pruned.shape == (int(select.sum()), 32)
    torch.testing.assert_close(pruned, whole[select], atol=1e-5, rtol=1e-5)


def test_input_normalisation_maps_back_to_pixels():
    model = make()
    model.set_pixel_stats(torch.tensor([0.2, 0.5, 0.8]), torch.tensor([0.1, 0.2, 0.3]))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    out = model(*window_batch(model)).view(-1, 3, 16)
    # A zero head predicts the training mean of each channel.
    torch.testing.assert_close(out[:, :, 0], torch.tensor([[0.2, 0.5, 0.8]]).expand(6, 3))
