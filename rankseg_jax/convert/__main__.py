"""Command line: convert checkpoints to a params-only dir, or export ours to an official `.pth`.

  python -m rankseg_jax.convert --config=configs/ade20k.py --src=ckpt.pth --out=DIR \
      [--format=auto|mmseg|segmenter|timm|npz|detectron2|swin] [--allow-partial] \
      [--reset-head]
  python -m rankseg_jax.convert --reverse --config=configs/ade20k.py --src=DIR --out=model.pth
  python -m rankseg_jax.convert --reverse --src=runs/ade20k --checkpoint=best --out=model.pth
  python -m rankseg_jax.convert --config=configs/ade20k_mask2former.py:rankseg \
      --src=model_final.pkl --out=DIR                  # official Mask2Former (detectron2)

Forward writes DIR/params (orbax, the model's nested nnx.Param pure dict) and
DIR/metadata.json. Reverse reads a params dir or a training run directory (its config.json
makes --config optional; --checkpoint=best|latest|<step> picks the step, default latest) and
writes the official checkpoint of the config's arch: mmseg `{'state_dict', 'meta'}`
(Segmenter) or detectron2 `{'model', 'meta'}` (Mask2Former).
An existing --out is refused before any work unless --overwrite; outputs are written under a
temporary name and renamed when complete, so an interrupted run never leaves half of one.
Errors (a checkpoint that does not fit: counts and the first keys of each kind) are printed as
one `error:` block, exit status 1 (2 for a configuration error).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file (optional with "
                                          "--reverse from a run directory).",
                                          lock_config=False)
_SRC = flags.DEFINE_string("src", None, "Source checkpoint (or, with --reverse, a params dir "
                           "or training run dir).")
_OUT = flags.DEFINE_string("out", None, "Output params dir (or .pth file with --reverse).")
_FORMAT = flags.DEFINE_enum("format", "auto", ["auto", "mmseg", "segmenter", "timm", "npz",
                                             "detectron2", "swin"],
                            "Source format; auto = from extension and keys.")
_ALLOW_PARTIAL = flags.DEFINE_bool("allow_partial", False,
                                   "Keep fresh init for params the source lacks "
                                   "(needed for backbone-only sources).")
_RESET_HEAD = flags.DEFINE_bool("reset_head", False,
                                "Keep the model's fresh head (e.g. other class count).")
_REVERSE = flags.DEFINE_bool("reverse", False, "Export a params dir or training run to an "
                             "official .pth (mmseg for Segmenter, detectron2 for Mask2Former).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "--reverse from a run dir: best | latest | "
                                  "<step> (default latest).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")


def _temporary(out: pathlib.Path) -> pathlib.Path:
    return out.with_name(f"{out.name}.tmp-{os.getpid()}")


def _publish(tmp: pathlib.Path, out: pathlib.Path) -> None:
    """Moves the finished `tmp` to `out` (replacing it: --overwrite was checked)."""
    if out.is_dir() and tmp.is_dir():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _reverse(src: str, out: pathlib.Path, tmp: pathlib.Path) -> None:
    import rankseg_jax
    from rankseg_jax import config as config_lib
    from rankseg_jax.config import serialization
    from rankseg_jax.convert import export_official

    config = _CONFIG.value if _CONFIG.value is not None else serialization.load(src)
    config_lib.validate(config, check_files=False)
    step = _CHECKPOINT.value or None
    config, model = rankseg_jax.load_model(src, config, step=step)
    export_official(model, config, tmp, {"source": str(pathlib.Path(src).absolute()),
                                         "step": step or "latest"})


def _forward(src: pathlib.Path, tmp: pathlib.Path) -> None:
    from rankseg_jax import checkpointing, models
    from rankseg_jax import config as config_lib
    from rankseg_jax.convert import config_summary, file_sha256, load_pretrained

    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required to convert into a model")
    config_lib.validate(config, check_files=False)
    model = models.build_model(config)
    report = load_pretrained(model, src, config, fmt=_FORMAT.value,
                             allow_partial=_ALLOW_PARTIAL.value, reset_head=_RESET_HEAD.value)
    print(report.summary())
    metadata = {"source": str(src.absolute()), "sha256": file_sha256(src),
                "format": report.format, "config_summary": config_summary(config),
                "allow_partial": _ALLOW_PARTIAL.value, "reset_head": _RESET_HEAD.value,
                "report": report.to_dict()}
    checkpointing.save_params(tmp, checkpointing.params_tree(model), metadata)


def main(argv):
    del argv
    out = pathlib.Path(_OUT.value).absolute()
    if out.exists() and not _OVERWRITE.value:  # before any work
        raise app.UsageError(f"--out={_OUT.value} exists; pass --overwrite to replace it")
    if _CHECKPOINT.value and not _REVERSE.value:
        raise app.UsageError("--checkpoint picks a step of a training run for --reverse")
    tmp = _temporary(out)
    try:
        if _REVERSE.value:
            _reverse(_SRC.value, out, tmp)
        else:
            _forward(pathlib.Path(_SRC.value), tmp)
        _publish(tmp, out)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    logging.info("wrote %s", out)
    print(f"wrote {out}" + ("" if _REVERSE.value else " (params/ and metadata.json)"))


def _errors() -> dict:
    """Refusals printed as one `error:` block (no traceback) -> exit status."""
    from rankseg_jax.checkpointing import CheckpointError
    from rankseg_jax.config import ConfigError
    from rankseg_jax.convert import CheckpointMismatch

    return {ConfigError: 2, CheckpointMismatch: 1, CheckpointError: 1, FileNotFoundError: 1}


def run() -> None:
    """Console-script entry point (`rankseg-convert`)."""
    root = str(pathlib.Path(__file__).resolve().parents[2])
    if pathlib.Path(root, "configs").is_dir() and root not in sys.path:
        sys.path.insert(0, root)  # a source checkout: `--config=configs/...` files import it
    # Accept --allow-partial / --reset-head as well as the underscore spellings.
    argv = [a.split("=", 1)[0].replace("-", "_").replace("__", "--", 1)
            + (a[len(a.split("=", 1)[0]):]) if a.startswith("--") else a for a in sys.argv]
    flags.mark_flags_as_required(["src", "out"])
    errors = _errors()
    try:
        app.run(main, argv=argv)
    except tuple(errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(next(code for kind, code in errors.items() if isinstance(e, kind)))


if __name__ == "__main__":
    run()
