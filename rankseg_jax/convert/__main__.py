"""Command line: convert checkpoints to a params-only dir, or export ours to an official `.pth`.

  python -m rankseg_jax.convert --config=configs/ade20k.py --src=ckpt.pth --out=DIR \
      [--format=auto|mmseg|segmenter|timm|npz|detectron2|swin] [--allow-partial] \
      [--reset-head]
  python -m rankseg_jax.convert --reverse --config=configs/ade20k.py --src=DIR --out=model.pth
  python -m rankseg_jax.convert --config=configs/ade20k_mask2former.py:rankseg \
      --src=model_final.pkl --out=DIR                  # official Mask2Former (detectron2)

Forward writes DIR/params (orbax, the model's nested nnx.Param pure dict) and
DIR/metadata.json. Reverse reads such a params dir and writes the official checkpoint of the
config's arch: mmseg `{'state_dict', 'meta'}` (Segmenter) or detectron2 `{'model', 'meta'}`
(Mask2Former).
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file.",
                                          lock_config=False)
_SRC = flags.DEFINE_string("src", None, "Source checkpoint (or params dir with --reverse).")
_OUT = flags.DEFINE_string("out", None, "Output params dir (or .pth file with --reverse).")
_FORMAT = flags.DEFINE_enum("format", "auto", ["auto", "mmseg", "segmenter", "timm", "npz",
                                             "detectron2", "swin"],
                            "Source format; auto = from extension and keys.")
_ALLOW_PARTIAL = flags.DEFINE_bool("allow_partial", False,
                                   "Keep fresh init for params the source lacks "
                                   "(needed for backbone-only sources).")
_RESET_HEAD = flags.DEFINE_bool("reset_head", False,
                                "Keep the model's fresh head (e.g. other class count).")
_REVERSE = flags.DEFINE_bool("reverse", False, "Export a params dir to an official .pth "
                             "(mmseg for Segmenter, detectron2 for Mask2Former).")


def main(argv):
    del argv
    from rankseg_jax import checkpointing, models
    from rankseg_jax import config as config_lib
    from rankseg_jax.convert import (
        config_summary,
        export_official,
        file_sha256,
        load_pretrained,
    )

    config = _CONFIG.value
    config_lib.validate(config, check_files=False)
    src, out = pathlib.Path(_SRC.value), pathlib.Path(_OUT.value)
    model = models.build_model(config)
    if _REVERSE.value:
        checkpointing.restore_params_into(model, src)
        export_official(model, config, out, {"source": str(src.absolute())})
        logging.info("wrote %s", out)
        print(f"wrote {out}")
        return
    report = load_pretrained(model, src, config, fmt=_FORMAT.value,
                             allow_partial=_ALLOW_PARTIAL.value, reset_head=_RESET_HEAD.value)
    print(report.summary())
    metadata = {"source": str(src.absolute()), "sha256": file_sha256(src),
                "format": report.format, "config_summary": config_summary(config),
                "allow_partial": _ALLOW_PARTIAL.value, "reset_head": _RESET_HEAD.value,
                "report": report.to_dict()}
    checkpointing.save_params(out, checkpointing.params_tree(model), metadata)
    print(f"wrote {out}/params and {out}/metadata.json")


def run() -> None:
    """Console-script entry point (`rankseg-convert`)."""
    root = str(pathlib.Path(__file__).resolve().parents[2])
    if pathlib.Path(root, "configs").is_dir() and root not in sys.path:
        sys.path.insert(0, root)  # a source checkout: `--config=configs/...` files import it
    # Accept --allow-partial / --reset-head as well as the underscore spellings.
    argv = [a.split("=", 1)[0].replace("-", "_").replace("__", "--", 1)
            + (a[len(a.split("=", 1)[0]):]) if a.startswith("--") else a for a in sys.argv]
    flags.mark_flags_as_required(["config", "src", "out"])
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
