"""The three PreDiff networks on their tiny presets (behaviour, not official parity: see
test_prediff_official.py): shapes, gradients, determinism, padding/cropping, the alignment
network's context option, bad input, the parts checked against brute-force formulas, and the
VAE loss against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from xearthformer.errors import ConfigError, ShapeError
from xearthformer.models.prediff import (
    CuboidTransformerUNet,
    FrameVAE,
    NoisyCuboidTransformerEncoder,
    PatchDiscriminator,
    VAELoss,
    kl_divergence,
    preset,
    sample_posterior,
)
from xearthformer.models.prediff.layers import AttentionPool, GroupNorm, timestep_embedding
from xearthformer.models.prediff.vae_loss import hinge_d_loss

VAE_CFG, UNET_CFG, ALIGN_CFG = preset("tiny")


def perturbed(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Every parameter moved by a little noise: the official init zeroes the attention/FFN
    outputs, the residual blocks' last convs and final_proj, which would hide most paths."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def unet_inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    t_in, t_out = UNET_CFG.input_shape[0], UNET_CFG.target_shape[0]
    x_t = torch.randn(batch, t_out, *UNET_CFG.target_shape[1:], generator=g)
    cond = torch.randn(batch, t_in, *UNET_CFG.input_shape[1:], generator=g)
    return x_t, torch.randint(0, 1000, (batch,), generator=g), cond


def assert_every_parameter_gets_a_gradient(model: torch.nn.Module) -> None:
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing[:10]}"


# ----------------------------------------------------------------------------- tiny presets

def test_tiny_presets_are_small():
    counts = [sum(p.numel() for p in m.parameters()) for m in (
        FrameVAE(VAE_CFG), CuboidTransformerUNet(UNET_CFG), NoisyCuboidTransformerEncoder(ALIGN_CFG))]
    assert counts == [241_749, 700_990, 141_553]
    assert VAE_CFG.downsample_factor == 4 and max(counts[1:]) < 1_000_000


@pytest.mark.parametrize("size", [(48, 48), (32, 32)])
def test_tiny_shapes_along_the_pipeline(size):
    """Frames -> latents -> eps / statistic -> frames, for 48 x 48 and 32 x 32 frames."""
    vae = FrameVAE(VAE_CFG).eval()
    h, w = vae.latent_size(size)
    unet = CuboidTransformerUNet(UNET_CFG.replace(input_shape=(7, h, w, 4), target_shape=(6, h, w, 4)))
    align = NoisyCuboidTransformerEncoder(ALIGN_CFG.replace(input_shape=(6, h, w, 4)))
    frames = torch.rand(2, 7, *size, 1)
    with torch.no_grad():
        mean, logvar = vae.encode(frames)
        z_t = torch.randn(2, 6, h, w, 4)
        eps = unet(z_t, torch.tensor([1, 999]), mean)
        stat = align(z_t, torch.tensor([1, 999]))
        out = vae.decode(eps)
    assert mean.shape == logvar.shape == (2, 7, size[0] // 4, size[1] // 4, 4)
    assert eps.shape == z_t.shape and stat.shape == (2, 6, 1) and out.shape == (2, 6, *size, 1)


def test_unet_outputs_zero_at_the_official_init():
    x_t, t, cond = unet_inputs()
    assert torch.equal(CuboidTransformerUNet(UNET_CFG)(x_t, t, cond), torch.zeros_like(x_t))


@pytest.mark.parametrize("which", ["vae", "unet", "alignment"])
def test_every_parameter_gets_a_gradient(which):
    torch.manual_seed(0)
    if which == "vae":
        model = FrameVAE(VAE_CFG)
        x = torch.rand(2, 2, 16, 16, 1)
        mean, logvar = model.encode(x)
        recon = model.decode(sample_posterior(mean, logvar, torch.randn_like(mean)), size=(16, 16))
        loss, _ = VAELoss(kl_weight=1e-2)(x, recon, mean, logvar)
    elif which == "unet":
        model = perturbed(CuboidTransformerUNet(UNET_CFG))
        x_t, t, cond = unet_inputs()
        loss = (model(x_t, t, cond) - x_t).pow(2).mean()
    else:
        model = perturbed(NoisyCuboidTransformerEncoder(ALIGN_CFG))
        loss = model(torch.randn(2, *ALIGN_CFG.input_shape), torch.tensor([3, 700])).pow(2).mean()
    loss.backward()
    assert_every_parameter_gets_a_gradient(model)


def test_eval_is_deterministic_and_train_mode_drops_out():
    cfg = UNET_CFG.replace(attn_drop=0.1, proj_drop=0.1, ffn_drop=0.1)
    unet = perturbed(CuboidTransformerUNet(cfg)).eval()
    x_t, t, cond = unet_inputs()
    with torch.no_grad():
        a, b = unet(x_t, t, cond), unet(x_t, t, cond)
        assert torch.equal(a, b)
        unet.train()
        assert not torch.allclose(unet(x_t, t, cond), a)
    align = perturbed(NoisyCuboidTransformerEncoder(ALIGN_CFG.replace(ffn_drop=0.1))).eval()
    z = torch.randn(2, *ALIGN_CFG.input_shape)
    with torch.no_grad():
        assert torch.equal(align(z, t), align(z, t))


# ------------------------------------------------------------------------------------- the UNet

def test_unet_input_assembly_puts_the_context_first_with_an_indicator():
    unet = CuboidTransformerUNet(UNET_CFG)
    x_t, _, cond = unet_inputs()
    h = unet.assemble_input(x_t, cond)
    t_in = cond.shape[1]
    assert h.shape == (2, t_in + x_t.shape[1], *x_t.shape[2:4], x_t.shape[4] + 1)
    assert torch.equal(h[:, :t_in, ..., :-1], cond) and torch.equal(h[:, t_in:, ..., :-1], x_t)
    assert torch.equal(h[:, :t_in, ..., -1], torch.ones_like(h[:, :t_in, ..., -1]))
    assert torch.equal(h[:, t_in:, ..., -1], torch.zeros_like(h[:, t_in:, ..., -1]))


def test_unet_eps_depends_on_the_context_the_time_and_each_sample_alone():
    unet = perturbed(CuboidTransformerUNet(UNET_CFG)).eval()
    x_t, t, cond = unet_inputs()
    with torch.no_grad():
        eps = unet(x_t, t, cond)
        assert not torch.allclose(unet(x_t, t, cond + 1.0), eps, atol=1e-4)
        assert not torch.allclose(unet(x_t, t + 1, cond), eps, atol=1e-6)
        alone = unet(x_t[1:], t[1:], cond[1:])  # no sample sees its batch-mates
        assert torch.allclose(alone, eps[1:], atol=1e-5)
        same_t = unet(x_t, torch.tensor(500), cond)  # a scalar t is every sample's t
        assert torch.allclose(same_t, unet(x_t, torch.tensor([500, 500]), cond), atol=1e-6)


def test_unet_rejects_wrong_shapes():
    unet = CuboidTransformerUNet(UNET_CFG)
    x_t, t, cond = unet_inputs()
    with pytest.raises(ShapeError, match="x_t"):
        unet(x_t[:, :5], t, cond)
    with pytest.raises(ShapeError, match="cond"):
        unet(x_t, t, cond[..., :3])
    with pytest.raises(ShapeError, match="batch size"):
        unet(x_t, t, cond[:1])
    with pytest.raises(ShapeError, match="one diffusion time per sample"):
        unet(x_t, t[:1], cond)


def test_unet_without_skips_and_with_scale_shift_time_embedding():
    for cfg in (UNET_CFG.replace(unet_res_connect=False), UNET_CFG.replace(time_embed_use_scale_shift_norm=True)):
        unet = perturbed(CuboidTransformerUNet(cfg))
        x_t, t, cond = unet_inputs()
        unet(x_t, t, cond).pow(2).mean().backward()
        assert_every_parameter_gets_a_gradient(unet)
    base = perturbed(CuboidTransformerUNet(UNET_CFG), seed=3).eval()
    no_skip = CuboidTransformerUNet(UNET_CFG.replace(unet_res_connect=False)).eval()
    no_skip.load_state_dict(base.state_dict())
    with torch.no_grad():
        assert not torch.allclose(base(x_t, t, cond), no_skip(x_t, t, cond), atol=1e-5)


# -------------------------------------------------------------------------------- alignment

def test_alignment_ignores_the_context_by_default():
    align = perturbed(NoisyCuboidTransformerEncoder(ALIGN_CFG)).eval()
    z = torch.randn(2, *ALIGN_CFG.input_shape)
    t = torch.tensor([10, 900])
    with torch.no_grad():
        out = align(z, t)
        assert torch.equal(align(z, t, torch.randn(2, 7, 12, 12, 4)), out)
        assert not torch.allclose(align(z + 0.5, t), out, atol=1e-5)


def test_alignment_context_option_changes_outputs_only_when_on():
    cfg = ALIGN_CFG.replace(context_len=7)
    align = perturbed(NoisyCuboidTransformerEncoder(cfg)).eval()
    assert align.pos_embed.T_embed.num_embeddings == 13 and align.first_proj.channels == 5
    z = torch.randn(2, *cfg.input_shape)
    t = torch.tensor([10, 900])
    ctx = torch.randn(2, 7, 12, 12, 4)
    with torch.no_grad():
        out = align(z, t, ctx)
        assert out.shape == (2, 6, 1)
        assert not torch.allclose(align(z, t, ctx + 1.0), out, atol=1e-5)
    with pytest.raises(ShapeError, match="context_len=7"):
        align(z, t)
    with pytest.raises(ShapeError, match="context"):
        align(z, t, ctx[:, :6])
    with pytest.raises(ShapeError, match="batch size"):
        align(z, t, ctx[:1])


def test_alignment_readouts():
    z = torch.randn(2, *ALIGN_CFG.input_shape)
    t = torch.tensor([0, 999])
    last3 = NoisyCuboidTransformerEncoder(ALIGN_CFG.replace(out_len=3, out_channels=2))
    assert last3(z, t).shape == (2, 3, 2)
    pooled = NoisyCuboidTransformerEncoder(ALIGN_CFG.replace(readout_seq=False))
    assert pooled(z, t).shape == (2, 1)
    with pytest.raises(ShapeError, match="z_t"):
        last3(z[:, :5], t)


def test_attention_pool_equals_a_brute_force_computation():
    torch.manual_seed(0)
    pool = AttentionPool(tokens=5, channels=8, num_heads=2, out_channels=3)
    x = torch.randn(4, 8, 5)
    tokens = torch.cat([x.mean(-1, keepdim=True), x], -1) + pool.positional_embedding  # (4, 8, 6)
    qkv = torch.einsum("oc,bcl->bol", pool.qkv_proj.weight[..., 0], tokens) + pool.qkv_proj.bias[:, None]
    q, k, v = qkv.chunk(3, dim=1)  # (4, 8, 6) each; head h = channels 4h..4h+3
    heads = []
    for h in range(2):
        qh, kh, vh = (a[:, 4 * h:4 * h + 4] for a in (q, k, v))
        w = torch.softmax(torch.einsum("bct,bcs->bts", qh, kh) / math.sqrt(4), dim=-1)
        heads.append(torch.einsum("bts,bcs->bct", w, vh))
    a = torch.cat(heads, dim=1)
    expected = (torch.einsum("oc,bcl->bol", pool.c_proj.weight[..., 0], a) + pool.c_proj.bias[:, None])[:, :, 0]
    assert torch.allclose(pool(x), expected, atol=1e-6)
    with pytest.raises(ShapeError, match="tokens"):
        pool(torch.randn(4, 8, 6))


def test_group_norm_backward_on_channels_last_input_without_grad():
    """(torch 2.13's plain CPU GroupNorm segfaults here; the subclass takes a contiguous copy)."""
    torch.manual_seed(0)
    norm, plain = GroupNorm(4, 8), torch.nn.GroupNorm(4, 8)
    x = torch.randn(2, 5, 6, 8).permute(0, 3, 1, 2)  # channels-last strides, no grad
    norm(x).pow(2).sum().backward()
    plain(x.contiguous()).pow(2).sum().backward()
    assert torch.allclose(norm.weight.grad, plain.weight.grad, atol=1e-5)
    assert torch.allclose(norm.bias.grad, plain.bias.grad, atol=1e-5)


def test_timestep_embedding_closed_form():
    t = torch.tensor([0, 7, 999])
    emb = timestep_embedding(t, 6)
    freqs = torch.tensor([10000.0 ** (-k / 3) for k in range(3)])
    assert torch.allclose(emb, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], -1))
    odd = timestep_embedding(t, 7)
    assert odd.shape == (3, 7) and torch.equal(odd[:, :6], emb) and torch.equal(odd[:, 6], torch.zeros(3))


# --------------------------------------------------------------------------------------- VAE

def test_vae_pads_frames_that_are_not_multiples_of_the_factor_and_crops_back():
    vae = FrameVAE(VAE_CFG).eval()
    x = torch.rand(2, 3, 30, 29, 1)
    with torch.no_grad():
        moments = vae.moments(x)
        padded = F.pad(x.permute(0, 1, 4, 2, 3).flatten(0, 1), (0, 3, 0, 2), mode="replicate")
        padded = padded.unflatten(0, (2, 3)).permute(0, 1, 3, 4, 2)  # the 32 x 32 edge-repeated frames
        assert padded.shape == (2, 3, 32, 32, 1)
        assert torch.allclose(moments, vae.moments(padded), atol=1e-5)  # (other memory layout: other rounding)
        mean, _ = vae.encode(x)
        assert mean.shape == (2, 3, 8, 8, 4) and vae.latent_size((30, 29)) == (8, 8)
        assert vae(x).shape == x.shape
        assert vae.decode(mean).shape == (2, 3, 32, 32, 1)
        assert torch.equal(vae.decode(mean, size=(30, 29)), vae.decode(mean)[:, :, :30, :29])
    with pytest.raises(ShapeError, match="ceil"):
        vae.decode(mean, size=(28, 29))  # 28 frames have 7-row latents, not 8
    with pytest.raises(ShapeError, match="channels last"):
        vae.encode(torch.rand(2, 3, 1, 32, 32))
    with pytest.raises(ShapeError, match="z must be"):
        vae.decode(torch.rand(2, 3, 8, 8, 3))


def test_vae_codes_each_frame_on_its_own():
    vae = FrameVAE(VAE_CFG).eval()
    x = torch.rand(2, 3, 16, 16, 1)
    with torch.no_grad():
        mean, _ = vae.encode(x)
        single, _ = vae.encode(x[1:, 2:])
    assert torch.allclose(mean[1:, 2:], single, atol=1e-5)


def test_sample_posterior_is_mean_plus_std_times_noise():
    mean, logvar, noise = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(sample_posterior(mean, logvar, noise), mean + torch.exp(logvar).sqrt() * noise)
    with pytest.raises(ShapeError):
        sample_posterior(mean, logvar, noise[:2])


# ---------------------------------------------------------------------------------- VAE loss

def test_vae_loss_closed_form():
    x, recon = torch.rand(2, 3, 4, 4, 1), torch.rand(2, 3, 4, 4, 1)
    mean, logvar = torch.randn(2, 3, 2, 2, 4), torch.randn(2, 3, 2, 2, 4)
    frames = 6
    kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum() / frames
    loss, logs = VAELoss(kl_weight=0.1)(x, recon, mean, logvar)
    assert torch.allclose(loss, (x - recon).abs().sum() / frames + 0.1 * kl)
    assert torch.allclose(logs["kl_loss"], kl) and torch.allclose(logs["rec_loss"], (x - recon).abs().mean())
    mse, _ = VAELoss(kl_weight=0.0, reconstruction="mse")(x, recon, mean, logvar)
    assert torch.allclose(mse, (x - recon).pow(2).sum() / frames)
    masked, _ = VAELoss(kl_weight=0.0)(x, recon, mean, logvar, mask=torch.zeros_like(x))
    assert float(masked) == 0.0
    # KL of N(m, s^2) to N(0, 1) per element: (m^2 + s^2 - 1 - ln s^2) / 2
    assert torch.allclose(kl_divergence(torch.full((1, 2), 2.0), torch.full((1, 2), math.log(3.0))),
                          torch.tensor([2 * 0.5 * (4 + 3 - 1 - math.log(3.0))]))
    with pytest.raises(ConfigError, match="reconstruction"):
        VAELoss(reconstruction="l2")
    with pytest.raises(ShapeError):
        VAELoss()(x, recon[:, :2], mean, logvar)


def test_patch_discriminator_is_the_official_one():
    disc = PatchDiscriminator(1)
    assert sum(p.numel() for p in disc.parameters()) == 2_763_585
    assert [k for k in disc.state_dict() if k.endswith("weight")][:3] == ["main.0.weight", "main.2.weight",
                                                                         "main.3.weight"]
    assert disc(torch.rand(2, 1, 64, 64)).shape == (2, 1, 6, 6)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert torch.allclose(hinge_d_loss(real, fake), torch.tensor(0.5 * (0.25 + 0.75)))


def test_adversarial_term_uses_the_adaptive_weight_from_disc_start():
    torch.manual_seed(0)
    vae = FrameVAE(VAE_CFG)
    loss_fn = VAELoss(kl_weight=0.0, discriminator=True, disc_start=10)
    x = torch.rand(2, 1, 32, 32, 1)
    mean, logvar = vae.encode(x)
    recon = vae.decode(mean)
    before, logs = loss_fn(x, recon, mean, logvar, step=9, last_layer=vae.last_layer)
    assert "g_loss" not in logs and torch.allclose(before, (x - recon).abs().sum() / 2)
    after, logs = loss_fn(x, recon, mean, logvar, step=10, last_layer=vae.last_layer)
    rec = (x - recon).abs().sum() / 2
    g = -loss_fn.discriminator(recon.permute(0, 1, 4, 2, 3).flatten(0, 1)).mean()
    grad_rec = torch.autograd.grad(rec, vae.last_layer, retain_graph=True)[0]
    grad_g = torch.autograd.grad(g, vae.last_layer, retain_graph=True)[0]
    weight = 0.5 * grad_rec.norm() / (grad_g.norm() + 1e-4)
    assert torch.allclose(logs["d_weight"], weight, rtol=1e-5)
    assert torch.allclose(after, rec + weight * g, rtol=1e-5)
    with pytest.raises(ConfigError, match="last_layer"):
        loss_fn(x, recon, mean, logvar, step=10)
    d_loss, _ = loss_fn.discriminator_loss(x, recon, step=10)
    d_loss.backward()
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())
    assert all(p.grad is None for p in vae.parameters())  # the reconstruction is detached
    assert float(loss_fn.discriminator_loss(x, recon, step=0)[1]["disc_loss"]) == 0.0
    with pytest.raises(ConfigError, match="discriminator=True"):
        VAELoss().discriminator_loss(x, recon)
