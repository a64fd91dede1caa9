"""The benchmarks' option parsing: ab_train_step's `mesh:` and `undo:` variants and vs_official's
`--ours_python` fail with a message naming the bad part, before anything is compiled; the
rows prepared for a lent GPU are valid jobs; the train-step table's columns."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
ab = pytest.importorskip("ab_train_step")


def test_mesh_variants_ask_for_the_largest_mesh():
    assert ab.devices_needed(["+acc", "opt:xla_cpu_use_onednn=true"]) == 1
    assert ab.devices_needed(["+acc", "mesh:data=2", "mesh:data=2+tensor=2"]) == 4
    assert ab._parse_mesh("data=2+tensor=1") == {"data": 2, "tensor": 1}


@pytest.mark.parametrize("text,bad", [("pipeline=2", "pipeline=2"), ("data=0", "data=0"),
                                      ("data=two", "data=two"), ("data=2+tensor", "tensor")])
def test_a_bad_mesh_variant_names_its_part(text, bad):
    message = f"bad mesh size '{bad}' in variant 'mesh:{text}'"
    with pytest.raises(SystemExit, match=re.escape(message)):
        ab._parse_mesh(text)


def test_undo_variants_swap_the_workarounds_in_and_back():
    import jax
    import numpy as np

    from rankseg_jax.train import optim
    with pytest.raises(SystemExit, match=re.escape("unknown workaround(s) ['norm'] in "
                                                   "variant 'undo:norm'")):
        ab._parse_undo("norm")
    names = ab._parse_undo("norm-matmul+scale-barrier")
    norm, barrier = optim.tree_norm, jax.lax.optimization_barrier
    tree = {"w": np.arange(4096, dtype=np.float32) / 4096}
    with ab._Undo(names):
        assert optim.tree_norm is not norm and jax.lax.optimization_barrier is not barrier
        np.testing.assert_allclose(optim.tree_norm(tree), norm(tree), rtol=1e-6)
        assert jax.lax.optimization_barrier(tree) is tree
    assert optim.tree_norm is norm and jax.lax.optimization_barrier is barrier


def test_vs_official_refuses_an_ours_python_that_is_not_executable(tmp_path):
    missing = tmp_path / "no_such_python"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "vs_official.py"),
                           "--ours_python", str(missing)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert f"--ours_python '{missing}' is not an executable file" in proc.stderr


def _installed(dist: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _aot_compile(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "aot_compile.py"),
                           "--preset", "ti16", "--size", "32", "--k", "4", "--kappa", "2",
                           *args], capture_output=True, text=True, timeout=300)


def test_aot_compile_without_the_cuda_plugin_says_what_to_install():
    if _installed("jax-cuda12-plugin"):
        pytest.skip("the CUDA plugin is installed here")
    proc = _aot_compile()
    assert proc.returncode == 1
    assert "aot_compile.py --target h200 needs jax's CUDA plugin" in proc.stderr
    assert "pip install 'jax[cuda12]==" in proc.stderr


def test_aot_compile_without_libtpu_says_what_to_install():
    if _installed("libtpu"):
        pytest.skip("libtpu is installed here")
    proc = _aot_compile("--target", "tpu:v5e:2x4")
    assert proc.returncode == 1
    assert "aot_compile.py --target tpu:v5e:2x4: no TPU topology 'v5e:2x4'" in proc.stderr
    assert "pip install 'jax[tpu]==" in proc.stderr


def test_aot_compile_names_an_unknown_target():
    proc = _aot_compile("--target", "a100")
    assert proc.returncode == 1
    assert "unknown --target 'a100'; use h200 or tpu:TOPOLOGY" in proc.stderr


def test_aot_compile_target_config_names_the_h200():
    aot = pytest.importorskip("aot_compile")
    text = aot.target_config_text()
    assert 'device_description_str: "NVIDIA H200 141GB HBM3e"' in text
    assert "core_count: 132" in text and "major: 9 minor: 0" in text
    assert text.count("{") == text.count("}")


def test_build_file_config_reads_a_config_file_and_names_a_missing_one():
    ts = pytest.importorskip("train_step")
    c = ts.build_file_config(str(ROOT / "configs" / "ade20k_mask2former.py"), "rankseg", None,
                             2, "bfloat16", False, ("model.mask2former.num_queries=120",))
    assert c.model.arch == "mask2former" and c.model.rankseg.enabled
    assert tuple(c.data.crop_size) == (640, 640) and c.train.batch_size == 2
    assert c.model.mask2former.num_queries == 120 and c.model.dtype == "bfloat16"
    with pytest.raises(SystemExit, match="config file 'nope.py' not found"):
        ts.build_file_config("nope.py", None, None, 1, "float32", False)


def test_the_prepared_gpu_rows_are_valid_jobs():
    """benchmarks/gpu_session.sh feeds each row of gpu_rows.json, with its defaults, to
    `train_step.py --worker`; a bad row would be found only on a lent GPU, so every row is
    checked here: `measure`'s arguments, and a config that validates for a GPU backend."""
    import inspect
    import json

    ts = pytest.importorskip("train_step")
    script = ROOT / "benchmarks" / "gpu_session.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    defaults = {"dtype": "bfloat16", "remat": False, "steps": 20, "warmup": 3, "overrides": []}
    text = script.read_text()
    # The Python dict literal in the script's row loop.
    assert all(f'"{key}": {json.dumps(v) if isinstance(v, str) else repr(v)}' in text
               for key, v in defaults.items())
    params = inspect.signature(ts.measure).parameters
    rows = json.loads((ROOT / "benchmarks" / "gpu_rows.json").read_text())
    assert rows
    for row in rows:
        job = {**defaults, **{k: v for k, v in row.items() if k != "xla_flags"}}
        assert set(job) <= set(params), row
        c = ts.build_config(job["preset"], job["size"], job["k"], job["kappa"], job["batch"],
                            job["dtype"], job["remat"], tuple(job["overrides"]), backend="gpu")
        assert c.train.batch_size == job["batch"] and c.model.dtype == job["dtype"]


def test_the_train_step_table_reports_page_faults_per_step():
    """`train_step.py`'s faults/step column: the minor page faults around each timed step
    (faults x 4 KiB = the memory XLA:CPU mapped afresh for that step)."""
    import numpy as np

    common = pytest.importorskip("common")
    before = common.minor_faults()
    # 64 MiB: above glibc's largest mmap threshold (32 MiB), so always mapped afresh (a
    # smaller block may reuse heap pages that an earlier test already faulted in).
    touched = np.ones(64 * 2**20, np.uint8)
    assert touched.sum() == 64 * 2**20
    assert common.minor_faults() > before
    ts = pytest.importorskip("train_step")
    row = {"preset": "s16", "size": 256, "K": 150, "kappa": 50, "batch": 1,
           "dtype": "float32", "remat": False, "overrides": [], "step_s": 0.3, "cpu_s": 0.5,
           "faults_per_step": 58123.0, "images_per_s": 3.3, "compile_s": 10.0,
           "gflops": 51.0, "tflops_per_s": 0.17, "mfu": None, "temp_MiB": 233.0,
           "peak_MiB": None}
    header, _, line = ts.table([row]).splitlines()
    cells = dict(zip([h.strip() for h in header.strip("|").split("|")],
                     [c.strip() for c in line.strip("|").split("|")], strict=True))
    assert cells["faults/step"] == "58123" and cells["CPU s/step"] == "0.500"
    assert cells["XLA temp (MiB)"] == "233"
    # Where getrusage does not exist the column says "not measured", not 0.
    header, _, line = ts.table([{**row, "faults_per_step": None}]).splitlines()
    assert line.split("|")[9].strip() == "-" and header.split("|")[9].strip() == "faults/step"
