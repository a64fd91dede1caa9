"""The package installs as a wheel and works from outside the repository.

Builds the wheel, installs it (without dependencies) into a fresh virtualenv that borrows the
test environment's third-party packages, and from a directory outside the repository imports
the package, builds a config, runs a tiny forward and runs the console scripts' --help.
"""

import pathlib
import subprocess
import sys
import sysconfig

import pytest

pytestmark = pytest.mark.slow  # builds a wheel and a virtualenv

ROOT = pathlib.Path(__file__).resolve().parents[2]

_FORWARD = """
import pathlib, sys
import jax.numpy as jnp
import rankseg_jax
from rankseg_jax import config as config_lib, models
assert "site-packages" in rankseg_jax.__file__, rankseg_jax.__file__
assert not any(pathlib.Path(p).resolve() == pathlib.Path({root!r}) for p in sys.path if p)
c = config_lib.base_config()
c.model.num_classes = 5
v, h, r = c.model.vit, c.model.head, c.model.rankseg
v.embed_dim, v.depth, v.num_heads, v.img_size = 32, 1, 2, (32, 32)
h.d_model, h.num_heads, h.d_ff = 32, 2, 64
r.topk, r.downsample = 3, 2
c.data.crop_size = c.test.crop_size = c.test.stride = (32, 32)
config_lib.validate(c, check_files=False, num_devices=1, process_count=1)
out = models.build_model(c)(jnp.zeros((1, 32, 32, 3)))
print("OK", rankseg_jax.__version__, out["mask_logits"].shape)
"""


def test_wheel_installs_and_runs_outside_the_repo(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(dist)], check=True)
    wheels = list(dist.glob("rankseg_jax-*.whl"))
    assert len(wheels) == 1, wheels
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Borrow jax, flax, ... from this environment (a path in a .pth file is not itself a site
    # dir, so this environment's editable install of rankseg_jax stays invisible).
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    pathlib.Path(site.stdout.strip(), "borrowed.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheels[0])],
                   check=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "HOME": str(tmp_path)}
    run = subprocess.run([str(py), "-c", _FORWARD.format(root=str(ROOT))], cwd=outside,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OK 0.2.0 (1, 3, 2, 2)" in run.stdout
    for script in ("rankseg-convert", "rankseg-jax", "rankseg-prepare"):
        out = subprocess.run([str(venv / "bin" / script), "--help"], cwd=outside, env=env,
                             capture_output=True, text=True)
        text = out.stdout + out.stderr
        # absl's --help exits with status 1 after printing the usage; argparse's with 0.
        assert out.returncode in (0, 1) and "Traceback" not in text, (script, text[-2000:])
        assert "flags" in text or "--dataset" in text, (script, text[-2000:])
