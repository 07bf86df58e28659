"""Layout-invariant dropout: masks are a function of (seed, step, layer, site,
sample, logical position) only, so any slicing of a batch or a tensor draws the
same masks as the whole."""
import pytest
import torch
import torch.nn.functional as F

from mpitrain import dropout as D


def run(x, samples, p=0.3, step=0, layer="block.0", site="s", **kw):
    with D.scope("invariant", 7, step, samples), D.layer(layer):
        return D.dropout(x, p, True, site, **kw)


def test_rate_and_scale():
    x = torch.ones(64, 32, 16)
    y = run(x, torch.arange(64))
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.7) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))


def test_same_mask_for_any_split_of_the_batch():
    x = torch.randn(8, 5, 6)
    ids = torch.tensor([40, 3, 17, 99, 5, 61, 0, 12])
    whole = run(x, ids)
    halves = torch.cat([run(x[:3], ids[:3]), run(x[3:], ids[3:])])
    assert torch.equal(whole, halves)
    shuffled = torch.randperm(8)
    assert torch.equal(run(x[shuffled], ids[shuffled]), whole[shuffled])


def test_same_mask_for_a_slice_of_heads():
    probs = torch.rand(2, 4, 6, 6)
    ids = torch.tensor([3, 9])
    whole = run(probs, ids, coords=[torch.arange(4), None, None])
    part = run(probs[:, 2:], ids, coords=[torch.arange(2, 4), None, None])
    assert torch.equal(whole[:, 2:], part)


def test_unpadded_rows_match_padded_tensor():
    """BERT drops out unpadded tokens [n, h]; the masks are those of the padded [b, L, h]."""
    b, length, h = 3, 5, 4
    x = torch.randn(b, length, h)
    ids = torch.tensor([11, 2, 30])
    padded = run(x, ids)
    lengths = torch.tensor([5, 2, 4])
    rows = (torch.arange(length)[None, :] < lengths[:, None]).reshape(-1).nonzero().squeeze(1)
    flat = x.reshape(b * length, h)[rows]
    unpadded = run(flat, ids, rows=rows // length, coords=[rows % length, None])
    assert torch.equal(unpadded, padded.reshape(b * length, h)[rows])
    # the same positions in a batch padded to another length draw the same masks
    longer = torch.cat([x, torch.randn(b, 3, h)], dim=1)
    assert torch.equal(run(longer, ids)[:, :length], padded)


@pytest.mark.parametrize("change", [dict(step=1), dict(layer="block.1"), dict(site="t")])
def test_masks_differ_by_step_layer_and_site(change):
    x = torch.ones(4, 64)
    ids = torch.arange(4)
    assert not torch.equal(run(x, ids), run(x, ids, **change))


def test_samples_draw_independent_masks():
    x = torch.ones(2, 4096)
    y = run(x, torch.tensor([0, 1]))
    agree = ((y[0] != 0) == (y[1] != 0)).float().mean().item()
    assert abs(agree - (0.7 ** 2 + 0.3 ** 2)) < 0.03


def test_off_outside_training_and_torch_mode_outside_a_scope():
    x = torch.randn(4, 8)
    assert D.dropout(x, 0.5, False, "s") is x
    torch.manual_seed(0)
    a = D.dropout(x, 0.5, True, "s")
    torch.manual_seed(0)
    assert torch.equal(a, F.dropout(x, 0.5, True))
    with D.scope("torch", 0, 0, torch.arange(4)):
        torch.manual_seed(0)
        assert torch.equal(D.dropout(x, 0.5, True, "s"), a)


def test_attention_without_dropout_equals_sdpa_and_gradients_flow():
    q, k, v = (torch.randn(2, 4, 5, 8, requires_grad=True) for _ in range(3))
    with D.scope("invariant", 0, 0, torch.arange(2)):
        out = D.attention(q, k, v, 0.2, True, causal=True)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        explicit = D.attention(q, k, v, 1e-12, True, causal=True)  # the explicit path, nothing dropped
    assert torch.allclose(explicit, ref, atol=1e-6)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
