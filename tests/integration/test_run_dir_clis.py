"""The CLIs accept a training run directory: `--checkpoint=best|latest|N`, `--config` compared
with the run's config.json, convert --reverse and export with --overwrite (refused before any
work), and the exported artifact's metadata + loader."""

import json
import pathlib
import subprocess
import sys

import jax
import pytest
from helpers import small_train_config

from rankseg_jax import checkpointing, cli, sharding
from rankseg_jax.config import serialization
from rankseg_jax.train import step as ts

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run_dir(tmp_path, config, scores):
    """A training run dir: config.json and checkpoints of `scores` ({step: mIoU})."""
    run = tmp_path / "run"
    serialization.save(config, run)
    setup = ts.make_setup(config, sharding.make_mesh(config, jax.devices()[:1]))
    ck = checkpointing.Checkpointer(checkpointing.checkpoint_dir(run), config)
    for step, miou in scores.items():
        ck.save(step, ts.init_state(setup), force=True)
        ck.record_score(step, miou)
    ck.close()
    return run


def test_step_choices_and_config_differences(tmp_path, capsys):
    c = small_train_config()
    run = _run_dir(tmp_path, c, {1: 0.3, 2: 0.2})
    assert cli.checkpoint_source("best", str(run), "predict") == (str(run), "best")
    assert cli.checkpoint_source("", str(run), "eval") == (str(run), None)
    assert cli.checkpoint_source("/x/params", "", "export") == ("/x/params", None)
    with pytest.raises(Exception, match="pass the run directory as --workdir"):
        cli.checkpoint_source("latest", "", "predict")
    assert checkpointing.resolve_step(run, "best") == 1
    other = small_train_config(**{"model.rankseg.topk": 4, "test.mode": "whole"})
    cli.warn_config_differences(other, str(run))
    err = capsys.readouterr().err
    assert "model.rankseg.topk: run=8, given=4" in err
    assert "test.mode: run='slide', given='whole'" in err
    cli.warn_config_differences(c, str(run))
    assert capsys.readouterr().err == ""
    assert cli.parse_profile("3:5") == (3, 5)


def _cli(*args, ok=True):
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=900)
    assert (out.returncode == 0) == ok, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.mark.slow
def test_convert_reverse_and_export_from_a_run_dir(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("flatbuffers")
    c = small_train_config()
    run = _run_dir(tmp_path, c, {1: 0.5, 2: 0.1})
    pth, art = tmp_path / "best.pth", tmp_path / "model.jax"
    # No --config: the run's config.json; best = step 1.
    log = _cli("-m", "rankseg_jax.convert", "--reverse", f"--src={run}", "--checkpoint=best",
               f"--out={pth}")
    assert f"wrote {pth}" in log
    import torch
    meta = torch.load(pth, weights_only=False)["meta"]
    assert meta["step"] == "best" and pth.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "run"]  # no temp left
    before = pth.stat().st_mtime_ns
    log = _cli("-m", "rankseg_jax.convert", "--reverse", f"--src={run}", f"--out={pth}",
               ok=False)
    assert "exists; pass --overwrite" in log and pth.stat().st_mtime_ns == before
    log = _cli("main.py", "--mode=export", f"--workdir={run}", "--checkpoint=2",
               f"--output={art}", "--export_size=64,64", "--platforms=cpu,cuda,tpu")
    assert "platforms cpu,cuda,tpu" in log
    from rankseg_jax.evaluation import export
    fn, meta = export.load_exported(art)
    assert meta["step"] == "2" and meta["platforms"] == ["cpu", "cuda", "tpu"]
    assert fn(jax.numpy.zeros((1, 64, 64, 3)))["pred"].shape == (1, 64, 64)
    log = _cli("main.py", "--mode=export", f"--workdir={run}", f"--output={art}", ok=False)
    assert "exists; pass --overwrite" in log
    assert json.loads((run / "config.json").read_text())["model"]["num_classes"] == 20
