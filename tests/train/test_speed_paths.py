"""The speed changes keep the numbers: one-pass loss + accuracy, rbg dropout keys, the
global norms' form per platform, and the process settings of `rankseg_jax/runtime.py`."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import small_train_config

from rankseg_jax import runtime, sharding
from rankseg_jax.data import pipeline as input_pipeline
from rankseg_jax.train import losses
from rankseg_jax.train import step as ts


def _reference(logits, labels, ignore, average):
    """The two-pass formulation: jax.nn.log_softmax + gather, and a K-way argmax."""
    c = logits.shape[1]
    valid = (labels >= 0) & (labels < c) & (labels != ignore)
    logp = jax.nn.log_softmax(logits, axis=1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[:, None], axis=1)[:, 0]
    total = jnp.where(valid, nll, 0.0).sum()
    loss = total / labels.size if average == "all_pixels" else total / max(int(valid.sum()), 1)
    return loss, 100.0 * (jnp.argmax(logits, axis=1) == labels).mean()


@pytest.mark.parametrize("average", ["all_pixels", "valid_pixels"])
def test_one_pass_loss_and_accuracy_equal_log_softmax_and_argmax(average):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.standard_normal((2, 7, 9, 11)) * 3, jnp.float32)
    labels = rng.integers(0, 7, (2, 9, 11))
    labels[0, :3] = 255  # ignored
    labels[1, 0, :4] = 9  # outside [0, C): ignored, counts as wrong
    # Make a third of the pixels correct so the accuracy is not trivially ~1/C.
    argmax = np.asarray(jnp.argmax(logits, axis=1))
    pick = rng.random(labels.shape) < 0.33
    labels = jnp.asarray(np.where(pick & (labels < 7), argmax, labels), jnp.int32)
    loss, acc = losses.cross_entropy_and_accuracy(logits, labels, 255, average)
    ref_loss, ref_acc = _reference(logits, labels, 255, average)
    assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
    assert float(acc) == float(ref_acc) and 20.0 < float(acc) < 60.0
    grad = jax.grad(lambda x: losses.cross_entropy_and_accuracy(x, labels, 255, average)[0])
    ref_grad = jax.grad(lambda x: _reference(x, labels, 255, average)[0])
    np.testing.assert_allclose(grad(logits), ref_grad(logits), rtol=1e-5, atol=1e-7)


def _setup_step_batch(config):
    """(setup, the jitted train step, the config's first training batch on the mesh)."""
    setup = ts.make_setup(config, sharding.make_mesh(config))
    batch = input_pipeline.to_global(next(input_pipeline.make_train_iterator(config)),
                                     sharding.batch_sharding(setup.mesh))
    return setup, ts.make_train_step(setup), batch


def _steps(config, n=2):
    """Params after n steps from the config's random init (same batch, key 0)."""
    setup, step, batch = _setup_step_batch(config)
    state = ts.init_state(setup)
    for _ in range(n):
        state, _ = step(state, batch, jax.random.PRNGKey(0))
    return jax.device_get(state["params"])


@pytest.mark.parametrize("platform", ["cpu", "gpu"])
def test_the_step_takes_its_norms_in_the_form_for_its_mesh_platform(platform, monkeypatch):
    """A CPU mesh's step takes the global norms (gradient, parameters, optimizer state, and
    the clipping norm) as [16, 16] matrix products (`optim.tree_norm`); a GPU mesh's as
    reductions, even when traced on a CPU host (ahead-of-time compiles)."""
    config = small_train_config(**{"optim.clip_grad_norm": 1.0})
    mesh = sharding.make_mesh(config)
    assert ts.mesh_platform(mesh) == "cpu"
    monkeypatch.setattr(ts, "mesh_platform", lambda m: platform)
    setup, step, batch = _setup_step_batch(config)
    text = step.lower(setup.abstract_state, batch, jax.random.PRNGKey(0)).as_text()
    grams = text.count("-> tensor<16x16xf32>")
    if platform == "cpu":
        # Four norms over the parameter-shaped trees, one product per leaf of >= 4096.
        assert grams >= 4
    else:
        assert grams == 0


def test_the_step_updates_its_state_in_place():
    """The state is donated and every leaf of the new state lives in its old buffer: no copy
    of the parameters and optimizer state per step, and no second copy in memory."""
    setup, step, batch = _setup_step_batch(small_train_config())
    state, _ = step(ts.init_state(setup), batch, jax.random.PRNGKey(0))
    old = jax.tree_util.tree_leaves(state)
    addresses = [leaf.unsafe_buffer_pointer() for leaf in old]
    new, _ = step(state, batch, jax.random.PRNGKey(1))
    assert all(leaf.is_deleted() for leaf in old)
    assert [leaf.unsafe_buffer_pointer() for leaf in jax.tree_util.tree_leaves(new)] == addresses


def test_rbg_dropout_keys_are_deterministic_and_a_different_stream():
    """Same (state, batch, key) -> same params (so resume is exact); the rbg stream differs
    from threefry's, so the option really reaches dropout / drop-path."""
    drop = {"model.head.dropout": 0.1, "model.vit.drop_path_rate": 0.1}
    rbg = small_train_config(**drop, **{"train.dropout_prng": "rbg"})
    first, second = _steps(rbg), _steps(rbg)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    threefry = _steps(small_train_config(**drop))
    assert any(not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(first), jax.tree.leaves(threefry), strict=True))


def test_step_key_is_a_pure_function_of_the_step():
    def data(key):
        typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        return np.asarray(jax.random.key_data(key) if typed else key)

    base = jax.random.PRNGKey(3)
    for impl in ("threefry", "rbg"):
        np.testing.assert_array_equal(data(ts.step_key(base, 5, impl)),
                                      data(ts.step_key(base, 5, impl)))
        assert not np.array_equal(data(ts.step_key(base, 5, impl)),
                                  data(ts.step_key(base, 6, impl)))
    assert data(ts.step_key(base, 5, "rbg")).shape == (4,)


def test_cpu_flags_are_added_once_and_never_override_the_user():
    env = {}
    assert runtime.configure_cpu_flags(env) == list(runtime.CPU_FLAGS)
    assert env["XLA_FLAGS"] == " ".join(runtime.CPU_FLAGS)
    assert runtime.configure_cpu_flags(env) == []  # already there
    user = {"XLA_FLAGS": f"--xla_dump_to=/tmp/x {runtime.YNN_FLAG}=dot,reduce"}
    assert runtime.configure_cpu_flags(user) == [runtime.MULTI_OUTPUT_FUSION_FLAG]
    assert user["XLA_FLAGS"] == (f"--xla_dump_to=/tmp/x {runtime.YNN_FLAG}=dot,reduce "
                                 f"{runtime.MULTI_OUTPUT_FUSION_FLAG}")
    other = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    runtime.configure_cpu_flags(other)
    assert other["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                          *runtime.CPU_FLAGS]
    # The user's own backend options are kept whole; only the YNN flag is added.
    extra = {"XLA_FLAGS": "--xla_backend_extra_options=xla_cpu_disable_loop_unrolling"}
    assert runtime.configure_cpu_flags(extra) == [f"{runtime.YNN_FLAG}=dot"]
    assert extra["XLA_FLAGS"].split()[0] == \
        "--xla_backend_extra_options=xla_cpu_disable_loop_unrolling"


def test_cpu_flags_reach_this_process_compiler():
    """The suite runs under the project's flags (tests/conftest.py), both of them."""
    assert runtime.MULTI_OUTPUT_FUSION_FLAG in runtime.CPU_FLAGS
    flags = os.environ.get("XLA_FLAGS", "").split()
    if any(f.startswith("--xla_backend_extra_options=") for f in flags
           if f != runtime.MULTI_OUTPUT_FUSION_FLAG):
        pytest.skip("XLA_FLAGS sets its own backend options")
    assert runtime.MULTI_OUTPUT_FUSION_FLAG in flags


def test_cache_dir_setting_precedence(monkeypatch):
    monkeypatch.delenv(runtime.CACHE_ENV, raising=False)
    assert runtime.cache_dir_setting(None) == runtime.DEFAULT_CACHE_DIR
    monkeypatch.setenv(runtime.CACHE_ENV, "/tmp/c")
    assert runtime.cache_dir_setting(None) == "/tmp/c"
    assert runtime.cache_dir_setting("") == ""  # the flag wins, empty = off


def test_dropout_prng_is_validated():
    from rankseg_jax import config as config_lib

    with pytest.raises(config_lib.ConfigError, match="train.dropout_prng"):
        small_train_config(**{"train.dropout_prng": "philox"})


def test_remat_policy_is_validated_and_maps_to_jax_policies():
    from rankseg_jax import config as config_lib
    from rankseg_jax.models import transformer as tfm

    with pytest.raises(config_lib.ConfigError, match="model.remat_policy"):
        small_train_config(**{"model.remat": True, "model.remat_policy": "dots"})
    assert tfm.remat_policy(True) is None and tfm.remat_policy("nothing_saveable") is None
    assert tfm.remat_policy("dots_saveable") is jax.checkpoint_policies.dots_saveable
    with pytest.raises(ValueError, match="unknown remat policy 'dots'"):
        tfm.remat_policy("dots")


LINUX = dict(system="Linux", libc=("glibc", "2.36"))
ON = {"RANKSEG_JAX_MALLOC_TUNABLES": "1"}
ALL = ":".join(runtime.MALLOC_TUNABLES)


def test_malloc_environment_adds_the_settings_once():
    assert runtime.malloc_environment({"PATH": "/bin"}, **LINUX) is None  # opt-in
    env = runtime.malloc_environment({"PATH": "/bin", **ON}, **LINUX)
    assert env == {"PATH": "/bin", **ON, "GLIBC_TUNABLES": ALL}
    # The user's tunables are kept, and their values win; a restarted process (every
    # setting named) is not restarted again.
    env = runtime.malloc_environment(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=8:glibc.cpu.x86_shstk=on", **ON}, **LINUX)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=8:glibc.cpu.x86_shstk=on:" + ALL
    assert runtime.malloc_environment(env, **LINUX) is None


@pytest.mark.parametrize("environ,overrides", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0", **ON}, {}),  # the user's value wins
    ({"RANKSEG_JAX_MALLOC_TUNABLES": "0"}, {}),  # not opted in
    ({}, {}),
    (ON, {"system": "Darwin"}),
    (ON, {"libc": ("glibc", "2.31")}),
    (ON, {"libc": ("", "")}),  # musl: platform.libc_ver() knows no version
])
def test_malloc_environment_changes_nothing_where_it_cannot_help(environ, overrides):
    assert runtime.malloc_environment(environ, **{**LINUX, **overrides}) is None


def test_restart_with_malloc_tunables_reexecutes_the_command_line_once(tmp_path):
    """A real restart: the script runs twice (same PID), the second time with the tunable,
    and keeps its interpreter options and arguments."""
    if runtime.malloc_environment({**os.environ, **ON}) is None:
        pytest.skip("no malloc settings apply on this host (not Linux with glibc >= 2.35)")
    import subprocess
    import sys
    script = tmp_path / "prog.py"
    script.write_text(
        "import os, sys\n"
        "print('run', os.getpid(), repr(os.environ.get('GLIBC_TUNABLES', '')), sys.argv[1:],"
        " sys.flags.optimize, flush=True)\n"
        "from rankseg_jax import runtime\n"
        "runtime.restart_with_malloc_tunables()\n"
        "print('done', flush=True)\n")
    env = {**{k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}, **ON}
    want = runtime.malloc_environment(env)["GLIBC_TUNABLES"]
    out = subprocess.run([sys.executable, "-O", str(script), "--x=1"], env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 3 and lines[2] == "done", out
    first, second = lines[0].split(), lines[1].split()
    assert first[1] == second[1]  # same process, re-executed
    assert first[2] == "''" and second[2] == repr(want)
    assert lines[0].endswith("['--x=1'] 1") and lines[1].endswith("['--x=1'] 1")
