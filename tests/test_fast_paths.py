"""The fast paths of issue 13 against the plain ones: cheaper dropout (same distribution),
and compiled models (equal to eager)."""

from __future__ import annotations

import math

import pytest
import torch

from xearthformer.nn.layers import Dropout, dropout, keep_mask


def _z(count: float, n: int, p: float) -> float:
    """Standard score of ``count`` successes in ``n`` Bernoulli(p) trials."""
    return (count - n * p) / math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.1, 0.37, 0.9])
def test_keep_mask_keeps_with_probability_one_minus_p_independently(p):
    torch.manual_seed(1)
    n = 400_001  # odd: the last 64-bit draw is half used
    keep = keep_mask((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    dropped = ~keep
    assert abs(_z(float(dropped.sum()), n, p)) < 5
    # both int32 halves of every 64-bit draw (even and odd positions) are fair
    for part in (dropped[0::2], dropped[1::2]):
        assert abs(_z(float(part.sum()), part.numel(), p)) < 5
    # neighbours are independent: P(both dropped) = p**2
    pairs = (dropped[:-1] & dropped[1:]).double()
    assert abs(_z(float(pairs.sum()), n - 1, p * p)) < 5
    # fresh draws differ; the default generator's seed reproduces them
    torch.manual_seed(1)
    assert torch.equal(keep_mask((n,), p), keep)
    assert not torch.equal(keep_mask((n,), p), keep)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dropout_scales_kept_values_and_gradients_exactly(dtype):
    p = 0.25
    x = torch.randn(3, 50, 70, dtype=dtype, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, p)
    torch.manual_seed(3)
    keep = keep_mask(x.shape, p)
    assert y.dtype == dtype
    torch.testing.assert_close(y, torch.where(keep, x * (1 / (1 - p)), 0.0).to(dtype), rtol=0, atol=0)
    g = torch.randn_like(x)
    y.backward(g)
    torch.testing.assert_close(x.grad, torch.where(keep, g * (1 / (1 - p)), 0.0).to(dtype), rtol=0, atol=0)


def test_dropout_agrees_in_distribution_with_torch():
    # the same statistic (fraction dropped) from ours and from F.dropout, two-sample z-test
    p, n = 0.1, 1_000_000
    torch.manual_seed(0)
    x = torch.ones(n)
    ours = float((dropout(x, p) == 0).sum())
    theirs = float((torch.nn.functional.dropout(x, p) == 0).sum())
    assert abs(ours - theirs) / math.sqrt(2 * n * p * (1 - p)) < 5


def test_dropout_is_exact_identity_in_eval_and_at_zero():
    x = torch.randn(4, 5, requires_grad=True)
    layer = Dropout(0.3)
    assert layer.eval()(x) is x
    assert dropout(x, 0.0) is x and dropout(x, 0.3, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))


# -- torch.compile (backend aot_eager: compiles in seconds, same maths as inductor's input) -----
def _tiny_model(**overrides):
    from xearthformer.models.earthformer.config import preset
    from xearthformer.models.earthformer.network import Earthformer

    torch.manual_seed(0)
    cfg = preset("tiny", input_shape=(4, 8, 8, 1), target_shape=(3, 8, 8, 1), **overrides)
    return Earthformer(cfg.without_dropout())


def test_compiled_model_equals_eager_in_eval_and_in_a_training_step():
    from xearthformer.device import compiled

    model = _tiny_model()
    x, y = torch.randn(2, 4, 8, 8, 1), torch.randn(2, 3, 8, 8, 1)
    fast = compiled(model, "aot_eager")
    with torch.inference_mode():
        torch.testing.assert_close(fast.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)
    model.train()
    torch.nn.functional.mse_loss(model(x), y).backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(fast(x), y)
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-5, atol=1e-6, msg=name)


def test_compile_setting_is_checked():
    from xearthformer.device import compiled
    from xearthformer.errors import ConfigError

    assert compiled(abs, False) is abs and compiled(abs, None) is abs
    with pytest.raises(ConfigError, match="no torch.compile backend"):
        compiled(abs, "no-such-backend")
    with pytest.raises(ConfigError, match="True, False or a torch.compile backend"):
        compiled(abs, 3)


def test_train_and_forecast_with_compile_equal_eager():
    # the plumbing (backend "eager": Dynamo's graph capture only, the cheapest; the numerics
    # of aot_eager are checked above)
    from tests.test_training import TINY, sst_like
    from xearthformer.training.labelled import train

    ds = sst_like()
    kw = dict(TINY, epochs=1, val=None, steps_per_epoch=2)
    eager = train(ds, **kw)
    torch._dynamo.reset()
    fast = train(ds, compile="eager", **kw)
    assert fast.metadata["training"]["config"]["compile"] == "eager"
    torch.testing.assert_close(torch.tensor(fast.metadata["training"]["history"]["step_loss"]),
                               torch.tensor(eager.metadata["training"]["history"]["step_loss"]), rtol=1e-5, atol=0)
    a = ds.earthformer.forecast(eager, init=slice("2002-01", None))
    b = ds.earthformer.forecast(eager, init=slice("2002-01", None), compile="eager")
    torch.testing.assert_close(torch.from_numpy(b.sst.values), torch.from_numpy(a.sst.values), rtol=1e-5, atol=1e-5,
                               equal_nan=True)
