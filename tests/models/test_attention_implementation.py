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
def test_cudnn_gradients_match_xla_in_bfloat16():
    """Input gradients at an even token count (odd ones are refused when differentiated)."""
    layers = _layers()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 1074, 768), jnp.float32)

    def grad(layer):
        def loss(x):
            y = layer(x.astype(jnp.bfloat16)).astype(jnp.float32)
            return jnp.sum(y * jnp.cos(y))
        return np.asarray(jax.grad(loss)(x))

    g_x, g_c = grad(layers["xla"]), grad(layers["cudnn"])
    assert np.isfinite(g_c).all()
    assert _rel(g_c, g_x) < 5e-2, _rel(g_c, g_x)
