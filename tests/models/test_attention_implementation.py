"""model.attention: "xla" (default, every backend) or "cudnn" (cuDNN flash attention).

The option's checks run on any machine; the cuDNN numerics test runs only where a CUDA GPU is
the default backend (benchmarks/gpu_session.sh runs it on a lent GPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import mask2former_train_config, small_train_config

from rankseg_jax import config as config_lib
from rankseg_jax import models
from rankseg_jax.models import transformer as tfm

ON_GPU = jax.default_backend() == "gpu"


def test_unknown_implementation_names_the_option():
    with pytest.raises(config_lib.ConfigError, match="model.attention"):
        small_train_config(**{"model.attention": "flash"})


def test_cudnn_needs_bfloat16():
    with pytest.raises(config_lib.ConfigError, match="model.dtype='bfloat16'"):
        small_train_config(**{"model.attention": "cudnn"})


def test_cudnn_needs_a_supported_head_dim():
    # width 32 over 32 heads: head dim 1 (not a multiple of 8)
    with pytest.raises(config_lib.ConfigError, match="head dim .* model.vit has 32 / 32"):
        small_train_config(**{"model.attention": "cudnn", "model.dtype": "bfloat16",
                              "model.vit.num_heads": 32})


def test_cudnn_is_wired_for_the_segmenter_vit_only():
    with pytest.raises(config_lib.ConfigError, match="wired for the Segmenter ViT"):
        mask2former_train_config(**{"model.attention": "cudnn", "model.dtype": "bfloat16"})


@pytest.mark.skipif(ON_GPU, reason="checks the error off a GPU")
def test_cudnn_off_a_gpu_names_the_backend():
    with pytest.raises(config_lib.ConfigError, match="needs a CUDA GPU; this run's backend"):
        small_train_config(**{"model.attention": "cudnn", "model.dtype": "bfloat16"})


def test_cudnn_validates_for_a_named_gpu_backend():
    """An ahead-of-time compile for a GPU (benchmarks/aot_compile.py) names the backend."""
    c = small_train_config()
    c.unlock()
    c.model.attention, c.model.dtype = "cudnn", "bfloat16"
    config_lib.validate(c, check_files=False, backend="gpu")
    with pytest.raises(config_lib.ConfigError, match="this run's backend is 'tpu'"):
        config_lib.validate(c, check_files=False, backend="tpu")


def test_the_option_reaches_every_vit_and_head_block_and_adds_no_parameters():
    c = small_train_config()
    xla_model = models.build_model(c)
    blocks = [*xla_model.backbone.layers, *xla_model.head.blocks]
    assert blocks and all(b.attn.implementation == "xla" for b in blocks)
    # Built directly (validation would refuse "cudnn" off a GPU): same parameter tree.
    c.unlock()
    c.model.attention = "cudnn"
    from rankseg_jax.models import build

    cudnn_model = build.ARCHS[c.model.arch](c, nnx.Rngs(c.seed))
    blocks = [*cudnn_model.backbone.layers, *cudnn_model.head.blocks]
    assert all(b.attn.implementation == "cudnn" for b in blocks)
    assert (jax.tree.structure(nnx.state(xla_model, nnx.Param))
            == jax.tree.structure(nnx.state(cudnn_model, nnx.Param)))


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _layers():
    return {impl: tfm.Attention(768, 12, init=tfm.trunc_normal_init(), dtype=jnp.bfloat16,
                                implementation=impl, rngs=nnx.Rngs(0))
            for impl in ("xla", "cudnn")}


@pytest.mark.skipif(not ON_GPU, reason="cuDNN flash attention needs a CUDA GPU")
@pytest.mark.parametrize("tokens", [1025, 1074])  # ViT-B/16 at 512² (+cls); + 50 classes
def test_cudnn_forward_matches_xla_in_bfloat16(tokens):
    """One attention layer's output, cuDNN vs XLA, bf16 inputs (relative L2 error)."""
    layers = _layers()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, tokens, 768), jnp.bfloat16)
    y_x = np.asarray(layers["xla"](x).astype(jnp.float32))
    y_c = np.asarray(layers["cudnn"](x).astype(jnp.float32))
    assert np.isfinite(y_c).all()
    assert _rel(y_c, y_x) < 2e-2, _rel(y_c, y_x)


@pytest.mark.skipif(not ON_GPU, reason="cuDNN flash attention needs a CUDA GPU")
@pytest.mark.parametrize("tokens", [1025, 1074])  # odd: padded to even by fused_attention
def test_cudnn_gradients_match_xla_in_bfloat16(tokens):
    """Input gradients, cuDNN vs XLA (relative L2 error)."""
    layers = _layers()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, tokens, 768), jnp.float32)

    def grad(layer):
        def loss(x):
            y = layer(x.astype(jnp.bfloat16)).astype(jnp.float32)
            return jnp.sum(y * jnp.cos(y))
        return np.asarray(jax.grad(loss)(x))

    g_x, g_c = grad(layers["xla"]), grad(layers["cudnn"])
    assert np.isfinite(g_c).all()
    assert _rel(g_c, g_x) < 5e-2, _rel(g_c, g_x)


@pytest.mark.parametrize("nq,nk", [(7, 7), (7, 10), (6, 9), (8, 8)])
def test_odd_length_padding_changes_nothing(nq, nk):
    """fused_attention's padding to even lengths (what lets jax's cuDNN path differentiate
    the ViT's 1025 tokens) gives the unpadded attention's output and gradients. Run here
    with XLA's implementation, which honours the same key_value_seq_lengths mask; the cuDNN
    kernel itself is compared on a GPU above."""
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((2, n, 3, 8)), jnp.float32)
               for n in (nq, nk, nk))
    w = jnp.asarray(rng.standard_normal((2, nq, 3, 8)), jnp.float32)

    def loss(pad_odd):
        def f(q, k, v):
            y = tfm.fused_attention(q, k, v, scale=8 ** -0.5, implementation="xla",
                                    pad_odd=pad_odd)
            return jnp.sum(jnp.sin(y) * w), y
        return jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(q, k, v)

    (l_ref, y_ref), g_ref = loss(False)
    (l_pad, y_pad), g_pad = loss(True)
    assert y_pad.shape == y_ref.shape == (2, nq, 3, 8)
    np.testing.assert_allclose(np.asarray(y_pad), np.asarray(y_ref), rtol=1e-5, atol=1e-6)
    for a, b in zip(g_pad, g_ref, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_padding_is_on_for_cudnn_only_and_refuses_a_mask():
    x = jnp.ones((1, 5, 2, 8), jnp.float32)
    traced = jax.make_jaxpr(lambda x: tfm.fused_attention(x, x, x, scale=1.0))(x)
    assert "pad" not in str(traced)  # xla: called as is
    with pytest.raises(ValueError, match="pad_odd=True takes no mask"):
        tfm.fused_attention(x, x, x, scale=1.0, mask=jnp.ones((1, 1, 5, 5), bool),
                            pad_odd=True)
