"""Cuboid attention against a brute-force reference: full attention over every position of the
padded grid with an explicit mask built from coordinates (same weights), for every pattern,
with hypothesis drawing shapes, cuboid sizes, shifts, dilations, padding and global vectors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xearthformer.errors import ConfigError
from xearthformer.nn import cuboid as cuboid_module
from xearthformer.nn.cuboid import CuboidCrossAttention, CuboidSelfAttention
from xearthformer.nn.decomposition import clamp_decomposition, from_cuboids, real_query_axis, to_cuboids
from xearthformer.nn.patterns import (
    CrossDecomposition,
    Decomposition,
    cross_pattern,
    self_pattern,
    self_pattern_names,
)

TOL = 1e-5


# ------------------------------------------------------------------------ brute-force reference

def _axis_layout(length: int, c: int, shift: int, strategy: str) -> tuple[list[int], list[int], list[int]]:
    """Per padded position along one axis: cuboid block, in-cuboid coordinate, shift region."""
    blocks, inner, region = [], [], []
    for p in range(length):
        q = (p - shift) % length  # index after rolling the grid by -shift
        if strategy == "l":
            blocks.append(q // c)
            inner.append(q % c)
        else:
            blocks.append(q % (length // c))
            inner.append(q // (length // c))
        region.append(0 if shift == 0 else (2 if q >= length - shift else (1 if q >= length - c else 0)))
    return blocks, inner, region


def _pad_reference(x: torch.Tensor, padded: tuple[int, int, int], padding_type: str, time_left: bool = False):
    """Padded copy of x (B, T, H, W, C) and the validity of every padded position."""
    b, t, h, w, c = x.shape
    tp, hp, wp = padded
    t0 = tp - t if time_left else 0
    valid = torch.zeros(tp, hp, wp, dtype=torch.bool)
    valid[t0:t0 + t, :h, :w] = True
    if padding_type == "nearest":
        ti = torch.tensor([min(max(i - t0, 0), t - 1) for i in range(tp)])
        hi = torch.tensor([min(i, h - 1) for i in range(hp)])
        wi = torch.tensor([min(i, w - 1) for i in range(wp)])
        return x[:, ti][:, :, hi][:, :, :, wi], valid
    out = torch.zeros(b, tp, hp, wp, c, dtype=x.dtype)
    out[:, t0:t0 + t, :h, :w] = x
    return out, valid


def _softmax_rows(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over allowed keys; rows without any allowed key give all-zero weights."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)


def _heads(y: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, heads * d) -> (B, heads, N, d)."""
    b, n, c = y.shape
    return y.reshape(b, n, heads, c // heads).transpose(1, 2)


def _bias_index(dq, dk, extent):
    span = [2 * e - 1 for e in extent]
    return (dq[0] - dk[0] + extent[0] - 1) * span[1] * span[2] + (dq[1] - dk[1] + extent[1] - 1) * span[2] \
        + (dq[2] - dk[2] + extent[2] - 1)


def reference_self(attn: CuboidSelfAttention, x: torch.Tensor, g: torch.Tensor | None = None):
    """Brute force: every padded position attends to every other one, masked by coordinates."""
    d = attn.decomposition
    b, t, h, w, c = x.shape
    size, shift = list(d.cuboid_size), list(d.shift_size)
    for i, n in enumerate((t, h, w)):  # official clamping rule
        if d.strategy[i] == "d":
            shift[i] = 0
        if n <= size[i]:
            size[i], shift[i] = n, 0
    padded = tuple(n + (-n) % s for n, s in zip((t, h, w), size))
    xp, valid = _pad_reference(attn.norm(x), padded, attn.padding_type)
    layouts = [_axis_layout(n, s, sh, st_) for n, s, sh, st_ in zip(padded, size, shift, d.strategy)]
    pos = list(itertools.product(*(range(n) for n in padded)))
    blk = [tuple(layouts[a][0][p[a]] for a in range(3)) for p in pos]
    inn = [tuple(layouts[a][1][p[a]] for a in range(3)) for p in pos]
    reg = [tuple(layouts[a][2][p[a]] for a in range(3)) for p in pos]
    val = torch.tensor([bool(valid[p]) for p in pos])
    n = len(pos)
    allowed = torch.tensor([[blk[i] == blk[j] and reg[i] == reg[j] for j in range(n)] for i in range(n)])
    if attn.padding_type == "ignore":
        allowed &= val[:, None] & val[None, :]
    heads, hd = attn.num_heads, attn.head_dim
    scale = hd ** -0.5
    flat = xp.reshape(b, n, c)
    q, k, v = (_heads(y, heads) for y in attn.qkv(flat).chunk(3, dim=-1))
    scores = q @ k.transpose(-1, -2) * scale
    if attn.use_relative_pos:
        idx = torch.tensor([[_bias_index(inn[i], inn[j], d.cuboid_size) for j in range(n)] for i in range(n)])
        scores = scores + attn.relative_position_bias_table[idx].permute(2, 0, 1)
    if g is None:
        out = _softmax_rows(scores, allowed) @ v
        new_g = None
    else:
        gn = attn.global_vec_norm(g)
        num_g = g.shape[1]
        if attn.separate_global_qkv:
            l2g_q = _heads(attn.l2g_q_net(flat), heads)
            gk, gv = (_heads(y, heads) for y in attn.l2g_global_kv_net(gn).chunk(2, dim=-1))
            g2l_q = _heads(attn.g2l_global_q_net(gn), heads)
            g2l_k, g2l_v = _heads(attn.g2l_k_net(flat), heads), _heads(attn.g2l_v_net(flat), heads)
            if attn.use_global_self_attn:
                g2g_q, g2g_k, g2g_v = (_heads(y, heads) for y in attn.g2g_global_qkv_net(gn).chunk(3, dim=-1))
        else:
            qg, gk, gv = (_heads(y, heads) for y in attn.global_qkv(gn).chunk(3, dim=-1))
            l2g_q, g2l_q, g2l_k, g2l_v, g2g_q, g2g_k, g2g_v = q, qg, k, v, qg, gk, gv
        scores = torch.cat([scores, l2g_q @ gk.transpose(-1, -2) * scale], dim=-1)
        allowed_g = torch.cat([allowed, torch.ones(n, num_g, dtype=torch.bool)], dim=-1)
        out = _softmax_rows(scores, allowed_g) @ torch.cat([v, gv], dim=-2)
        g_scores = g2l_q @ g2l_k.transpose(-1, -2) * scale
        g_allowed = (val if attn.padding_type == "ignore" else torch.ones(n, dtype=torch.bool)).expand(num_g, n)
        g_values = g2l_v
        if attn.use_global_self_attn:
            g_scores = torch.cat([g_scores, g2g_q @ g2g_k.transpose(-1, -2) * scale], dim=-1)
            g_allowed = torch.cat([g_allowed, torch.ones(num_g, num_g, dtype=torch.bool)], dim=-1)
            g_values = torch.cat([g2l_v, g2g_v], dim=-2)
        new_g = (_softmax_rows(g_scores, g_allowed) @ g_values).transpose(1, 2).reshape(b, num_g, -1)
    out = out.transpose(1, 2).reshape(b, n, c)
    if attn.use_final_proj:
        out = attn.proj(out)
        if new_g is not None:
            new_g = attn.global_proj(new_g)
    out = out.reshape(b, *padded, c)[:, :t, :h, :w]
    return out if new_g is None else (out, new_g)


def reference_cross(attn: CuboidCrossAttention, x: torch.Tensor, mem: torch.Tensor, g: torch.Tensor | None = None):
    """Brute force cross-attention: each query position against every memory position."""
    d = attn.decomposition
    if attn.cross_last_n_frames is not None:
        mem = mem[:, -attn.cross_last_n_frames:]
    b, tx, h, w, c = x.shape
    tm = mem.shape[1]
    nt, (bh, bw) = d.n_temporal, d.cuboid_hw
    hp, wp = h + (-h) % bh, w + (-w) % bw
    txp, tmp = tx + (-tx) % nt, tm + (-tm) % nt
    xp, vx = _pad_reference(attn.norm(x), (txp, hp, wp), attn.padding_type)
    mp, vm = _pad_reference(mem, (tmp, hp, wp), attn.padding_type, time_left=True)

    def layout(tlen):
        lay_t = _axis_layout(tlen, tlen // nt, 0, d.strategy[0])
        lay_h = _axis_layout(hp, bh, d.shift_hw[0], d.strategy[1])
        lay_w = _axis_layout(wp, bw, d.shift_hw[1], d.strategy[2])
        pos = list(itertools.product(range(tlen), range(hp), range(wp)))
        info = [((lay_t[0][p[0]], lay_h[0][p[1]], lay_w[0][p[2]]),
                 (lay_t[1][p[0]], lay_h[1][p[1]], lay_w[1][p[2]]),
                 (lay_h[2][p[1]], lay_w[2][p[2]])) for p in pos]
        return pos, info

    qpos, qinfo = layout(txp)
    kpos, kinfo = layout(tmp)
    allowed = torch.tensor([[qi[0] == ki[0] and qi[2] == ki[2] for ki in kinfo] for qi in qinfo])
    if attn.padding_type == "ignore":
        allowed &= torch.tensor([bool(vx[p]) for p in qpos])[:, None] & torch.tensor([bool(vm[p]) for p in kpos])
    heads, scale = attn.num_heads, attn.head_dim ** -0.5
    xf, mf = xp.reshape(b, -1, c), mp.reshape(b, -1, c)
    q = _heads(attn.q_proj(xf), heads)
    k, v = (_heads(y, heads) for y in attn.kv_proj(mf).chunk(2, dim=-1))
    scores = q @ k.transpose(-1, -2) * scale
    if attn.use_relative_pos:
        extent = (attn.max_temporal_relative, bh, bw)
        idx = torch.tensor([[_bias_index(qi[1], ki[1], extent) for ki in kinfo] for qi in qinfo])
        scores = scores + attn.relative_position_bias_table[idx].permute(2, 0, 1)
    if g is not None:
        num_g = g.shape[1]
        if attn.separate_global_qkv:
            l2g_q = _heads(attn.l2g_q_net(xf), heads)
            gk, gv = (_heads(y, heads) for y in attn.l2g_global_kv_net(g).chunk(2, dim=-1))
        else:
            l2g_q = q
            gk, gv = (_heads(y, heads) for y in attn.kv_proj(g).chunk(2, dim=-1))
        scores = torch.cat([scores, l2g_q @ gk.transpose(-1, -2) * scale], dim=-1)
        allowed = torch.cat([allowed, torch.ones(len(qpos), num_g, dtype=torch.bool)], dim=-1)
        v = torch.cat([v, gv], dim=-2)
    out = (_softmax_rows(scores, allowed) @ v).transpose(1, 2).reshape(b, -1, c)
    return attn.proj(out).reshape(b, txp, hp, wp, c)[:, :tx, :h, :w]


# ----------------------------------------------------------------------------------- helpers

def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (norms included), so nothing cancels by construction."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= TOL, f"max abs difference {err:.3g} > {TOL}"


axis_strategy = st.sampled_from("ld")
padding = st.sampled_from(["zeros", "ignore", "nearest"])


@st.composite
def self_cases(draw):
    grid = tuple(draw(st.integers(1, 5)) for _ in range(3))
    size = tuple(draw(st.integers(1, 4)) for _ in range(3))
    strategy = tuple(draw(axis_strategy) for _ in range(3))
    shift = tuple(draw(st.integers(0, max(0, s - 1))) for s in size)
    use_global = draw(st.booleans())
    options = dict(
        padding_type=draw(padding),
        use_relative_pos=draw(st.booleans()),
        use_final_proj=draw(st.booleans()),
        use_global_vector=use_global,
        use_global_self_attn=use_global and draw(st.booleans()),
        separate_global_qkv=use_global and draw(st.booleans()),
    )
    if options["separate_global_qkv"]:
        options["global_dim_ratio"] = draw(st.sampled_from([1, 2]))
    return grid, Decomposition(size, strategy, shift), options, draw(st.integers(1, 2)), draw(st.integers(0, 10**6))


@settings(max_examples=150, deadline=None)
@given(self_cases())
def test_self_attention_matches_brute_force(case):
    check_self_attention(case)


def check_self_attention(case):
    """Random weights and inputs for a drawn case; outputs (and global vectors) vs brute force."""
    grid, decomposition, options, batch, seed = case
    attn = CuboidSelfAttention(dim=8, num_heads=2, decomposition=decomposition, **options).eval()
    _randomise(attn, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *grid, 8, generator=gen)
    if options["use_global_vector"]:
        g = torch.randn(batch, 3, 8 * options.get("global_dim_ratio", 1), generator=gen)
        out, new_g = attn(x, g)
        ref, ref_g = reference_self(attn, x, g)
        _close(new_g, ref_g)
    else:
        out, ref = attn(x), reference_self(attn, x)
    _close(out, ref)


@st.composite
def cross_cases(draw):
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    hw = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strategy = tuple(draw(axis_strategy) for _ in range(3))
    shift = tuple(draw(st.integers(0, s - 1)) for s in hw)
    n_t = draw(st.integers(1, 3))
    t_x, t_m = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    use_global = draw(st.booleans())
    options = dict(padding_type=draw(padding), use_relative_pos=draw(st.booleans()), use_global_vector=use_global,
                   separate_global_qkv=use_global and draw(st.booleans()),
                   cross_last_n_frames=draw(st.one_of(st.none(), st.integers(1, t_m))))
    return (t_x, t_m, h, w), CrossDecomposition(hw, shift, strategy, n_t), options, draw(st.integers(0, 10**6))


@settings(max_examples=150, deadline=None)
@given(cross_cases())
def test_cross_attention_matches_brute_force(case):
    check_cross_attention(case)


def check_cross_attention(case):
    """Random weights and inputs for a drawn case; cross-attention output vs brute force."""
    (t_x, t_m, h, w), decomposition, options, seed = case
    attn = CuboidCrossAttention(8, 2, decomposition, max_temporal_relative=t_x + t_m + 1, **options).eval()
    _randomise(attn, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x, mem = torch.randn(2, t_x, h, w, 8, generator=gen), torch.randn(2, t_m, h, w, 8, generator=gen)
    g = torch.randn(2, 3, 8, generator=gen) if options["use_global_vector"] else None
    _close(attn(x, mem, g), reference_cross(attn, x, mem, g))


SELF_PATTERNS = ["full", "axial", "divided_st", "video_swin", "video_swin_2x2", "spatial_lg_v1", "spatial_lg_2",
                 "axial_space_dilate_2"]


@pytest.mark.parametrize("name", SELF_PATTERNS)
@pytest.mark.parametrize("padding_type", ["zeros", "ignore"])
def test_every_self_pattern_matches_brute_force(name, padding_type):
    grid = (3, 5, 6)
    decompositions = self_pattern(name, (*grid, 8))
    assert decompositions, name
    for i, d in enumerate(decompositions):
        attn = CuboidSelfAttention(8, 2, d, padding_type=padding_type, use_global_vector=True,
                                   use_global_self_attn=True, separate_global_qkv=True).eval()
        _randomise(attn, i)
        x, g = torch.randn(1, *grid, 8), torch.randn(1, 2, 8)
        out, new_g = attn(x, g)
        ref, ref_g = reference_self(attn, x, g)
        _close(out, ref)
        _close(new_g, ref_g)


@pytest.mark.parametrize("name", ["cross_1x1", "cross_2x2", "cross_2x2_lg", "cross_2x2_heter"])
def test_every_cross_pattern_matches_brute_force(name):
    for i, d in enumerate(cross_pattern(name, (4, 4, 6, 8))):
        attn = CuboidCrossAttention(8, 2, d, max_temporal_relative=10).eval()
        _randomise(attn, i)
        x, mem = torch.randn(1, 5, 4, 6, 8), torch.randn(1, 4, 4, 6, 8)
        _close(attn(x, mem), reference_cross(attn, x, mem))


def test_patterns_follow_the_paper():
    assert [d.cuboid_size for d in self_pattern("axial", (6, 8, 10, 1))] == [(6, 1, 1), (1, 8, 1), (1, 1, 10)]
    assert all(d.shift_size == (0, 0, 0) and d.strategy == ("l", "l", "l") for d in self_pattern("axial", (6, 8, 10, 1)))
    swin = self_pattern("video_swin_2x4", (6, 8, 8, 1))
    assert [(d.cuboid_size, d.shift_size) for d in swin] == [((2, 4, 4), (0, 0, 0)), ((2, 4, 4), (1, 2, 2))]
    assert self_pattern("spatial_lg_4", (6, 8, 8, 1))[2].strategy == ("d", "d", "d")
    assert self_pattern("full", (6, 8, 8, 1))[0].cuboid_size == (6, 8, 8)
    assert cross_pattern("cross_4x4", (6, 3, 8, 1))[0].cuboid_hw == (3, 3)  # clamped to the grid


def test_unknown_pattern_lists_the_valid_names():
    with pytest.raises(ConfigError, match="axial.*video_swin"):
        self_pattern("axiall", (2, 2, 2, 1))
    with pytest.raises(ConfigError, match="cross_"):
        cross_pattern("cross_2x3", (2, 2, 2, 1))
    assert "axial" in self_pattern_names()


@settings(max_examples=30, deadline=None)
@given(st.tuples(*(st.integers(1, 3) for _ in range(6))), st.tuples(*(axis_strategy for _ in range(3))))
def test_cuboid_reorder_is_a_permutation_and_groups_cuboids(sizes, strategy):
    cuboid, blocks = sizes[:3], sizes[3:]
    grid = tuple(c * n for c, n in zip(cuboid, blocks))
    x = torch.arange(grid[0] * grid[1] * grid[2], dtype=torch.float32).reshape(1, *grid, 1)
    cub = to_cuboids(x, cuboid, strategy)
    assert cub.shape == (1, blocks[0] * blocks[1] * blocks[2], cuboid[0] * cuboid[1] * cuboid[2], 1)
    assert torch.equal(from_cuboids(cub, cuboid, strategy, grid), x)
    # inside one cuboid, local axes hold neighbours, dilated axes hold positions `blocks` apart
    first = cub[0, 0, :, 0].long()
    coords = torch.stack(torch.unravel_index(first, grid), dim=-1)
    for a in range(3):
        spread = sorted(set(coords[:, a].tolist()))
        step = 1 if strategy[a] == "l" else blocks[a]
        assert spread == [i * step for i in range(cuboid[a])]


def test_self_attention_rejects_a_wrong_channel_count():
    attn = CuboidSelfAttention(8, 2, Decomposition((2, 2, 2)))
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 8\)"):
        attn(torch.randn(1, 2, 2, 2, 4))


# ------------------------------------------------------------- the two attention code paths
# Small cuboids on the CPU run as matmul-softmax-matmul, larger ones through the fused
# scaled_dot_product_attention kernel (xearthformer.nn.cuboid.SMALL_CPU_SCORES). The tests
# above exercise the first; here the same brute-force references check the fused one.

class _fused_attention:
    """Context manager: every attention call takes the fused SDPA path."""

    def __enter__(self):
        self.saved, cuboid_module.SMALL_CPU_SCORES = cuboid_module.SMALL_CPU_SCORES, 0

    def __exit__(self, *exc):
        cuboid_module.SMALL_CPU_SCORES = self.saved


@settings(max_examples=40, deadline=None)
@given(self_cases())
def test_fused_self_attention_path_matches_brute_force(case):
    with _fused_attention():
        check_self_attention(case)


@settings(max_examples=40, deadline=None)
@given(cross_cases())
def test_fused_cross_attention_path_matches_brute_force(case):
    with _fused_attention():
        check_cross_attention(case)


def test_both_attention_paths_give_the_same_gradients():
    attn = CuboidSelfAttention(8, 2, Decomposition((2, 2, 2), shift_size=(1, 1, 1)), padding_type="ignore",
                               use_global_vector=True, use_global_self_attn=True, separate_global_qkv=True)
    _randomise(attn, 5)
    x, g = torch.randn(2, 3, 5, 4, 8), torch.randn(2, 2, 8)
    grads = []
    for fused in (False, True):
        attn.zero_grad()
        if fused:
            with _fused_attention():
                out, new_g = attn(x, g)
        else:
            out, new_g = attn(x, g)
        (out.square().sum() + new_g.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in attn.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert grads[0]["relative_position_bias_table"].abs().sum() > 0


# ------------------------------------------------ real queries only (REAL_QUERIES_ONLY) vs the plain path

class _plain_padding:
    """Context manager: self-attention projects and attends every padded position."""

    def __enter__(self):
        self.saved, cuboid_module.REAL_QUERIES_ONLY = cuboid_module.REAL_QUERIES_ONLY, False

    def __exit__(self, *exc):
        cuboid_module.REAL_QUERIES_ONLY = self.saved


@st.composite
def padded_self_cases(draw):
    """Self-attention cases (no global vectors) with an axis that real_query_axis picks."""
    size = tuple(draw(st.integers(1, 4)) for _ in range(3))
    axis = draw(st.integers(0, 2))
    size = tuple(max(2, c) if i == axis else c for i, c in enumerate(size))
    grid = tuple(draw(st.integers(size[i] + 1, 3 * size[i] - 1)) if i == axis else draw(st.integers(1, 5))
                 for i in range(3))
    grid = tuple(n + 1 if i == axis and n % size[i] == 0 else n for i, n in enumerate(grid))
    strategy = tuple("l" if i == axis else draw(axis_strategy) for i in range(3))
    shift = tuple(0 if i == axis else draw(st.integers(0, max(0, s - 1))) for i, s in enumerate(size))
    options = dict(padding_type=draw(padding), use_relative_pos=draw(st.booleans()),
                   use_final_proj=draw(st.booleans()))
    return grid, Decomposition(size, strategy, shift), options, draw(st.integers(1, 2)), draw(st.integers(0, 10**6))


def _outputs_and_grads(attn: CuboidSelfAttention, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    attn.zero_grad()
    x = x.clone().requires_grad_(True)
    out = attn(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    grads = {n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None}
    return out.detach(), {**grads, "x": x.grad}


@settings(max_examples=80, deadline=None)
@given(padded_self_cases())
def test_real_queries_only_equals_the_plain_path_with_gradients(case):
    grid, decomposition, options, batch, seed = case
    assert real_query_axis(grid, clamp_decomposition(grid, decomposition)) is not None  # the fast path runs
    attn = CuboidSelfAttention(dim=8, num_heads=2, decomposition=decomposition, **options).train()
    _randomise(attn, seed)
    x = torch.randn(batch, *grid, 8, generator=torch.Generator().manual_seed(seed + 1))
    out, grads = _outputs_and_grads(attn, x)
    with _plain_padding():
        ref, ref_grads = _outputs_and_grads(attn, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in ref_grads.items():  # (float32 round-off of sums over the batch: relative to the largest)
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5 * max(1.0, grad.abs().max().item()),
                                   msg=name)
    _close(attn.eval()(x), reference_self(attn, x))
