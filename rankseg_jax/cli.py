"""The command line: train, evaluate, predict or export (`main.py` and `rankseg-jax`).

    python main.py --config=configs/demo.py --workdir=/tmp/demo
    python main.py --config=configs/ade20k.py --workdir=runs/ade --mode=eval
    python main.py --mode=predict --checkpoint=/tmp/demo --input=images/ --output=/tmp/pred \
        [--labels=labels/]
    python main.py --mode=export --checkpoint=/tmp/demo --export_size=512,512 \
        --output=/tmp/model.jax [--platforms=cpu,cuda,tpu] [--overwrite]
    python main.py --mode=predict --workdir=/tmp/demo --checkpoint=best ...
    python main.py --config=configs/demo.py --workdir=gs://bucket/demo --profile=10:15
For eval, predict and export `--config` is optional when `--checkpoint`/`--workdir` is a run
directory: its saved config.json is used; when both are given and differ, the differing
options are listed (model options: the weights load only if their shapes still fit).
`--checkpoint=best|latest|N` picks a step of the run in --workdir (best = best val mIoU).
Override any option with --config.train.steps=100 etc. Multi-process: pass
--coordinator_address/--num_processes/--process_id (or --distributed for auto-detection on
managed clusters); each process then reads its own slice of the data.

Exit status: 0 when done, or stopped cleanly by SIGTERM (a preemption notice: the checkpoint
is saved, run the same command to resume); 130 after Ctrl-C (saved the same way); 2 for a
configuration or usage error, 1 for another refused start (workdir in use, no usable
checkpoint), printed as one `error:` line.
"""

from __future__ import annotations

import logging
import pathlib
import sys

import jax
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from rankseg_jax import runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:variant]); "
                                "optional for eval/predict/export of a run directory.",
                                lock_config=True)
flags.DEFINE_string("workdir", "", "Run directory: checkpoints, logs, metrics.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "export"], "What to do.")
flags.DEFINE_string("checkpoint", "", "eval/predict/export weights: params-only dir, run dir, "
                    ".pth, or best|latest|<step> of the run in --workdir; default: latest "
                    "checkpoint in --workdir.")
flags.DEFINE_string("input", "", "predict: an image file or a folder of images.")
flags.DEFINE_string("output", "", "predict: output folder; export: the artifact file.")
flags.DEFINE_string("labels", "", "predict: folder of ground-truth label files named like the "
                    "images (dataset format); adds ground truth to the panels and marks true/"
                    "false positives in the score charts.")
flags.DEFINE_list("export_size", ["512", "512"], "export: input height,width.")
flags.DEFINE_list("platforms", [], "export: lowering platforms, e.g. cpu,cuda,tpu (default: "
                  "this machine's).")
flags.DEFINE_bool("overwrite", False, "export: replace an existing --output.")
flags.DEFINE_string("profile", "", "train: START:STOP, write a jax.profiler trace of those "
                    "steps to <workdir>/profile (config train.profile_steps).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detect).")
flags.DEFINE_string("coordinator_address", "", "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", 1, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", 0, "This process's index (multi-process).")
flags.DEFINE_string("compilation_cache_dir", None,
                    "Persistent XLA compilation cache (restarts load the compiled step instead "
                    "of recompiling it); empty = off. Default: $RANKSEG_JAX_COMPILATION_CACHE_DIR"
                    f" if set, else {runtime.DEFAULT_CACHE_DIR}. JAX_COMPILATION_CACHE_DIR, "
                    "when set, wins.")


def _maybe_initialize_distributed() -> None:
    if FLAGS.num_processes > 1 or FLAGS.coordinator_address:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address or None,
                                   num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()


def _quiet_libraries() -> None:
    """Keeps the console readable: library INFO chatter (orbax logs every save step by step)
    goes away unless --verbosity is given; our own `rankseg_jax` INFO messages stay."""
    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("rankseg_jax").setLevel(logging.INFO)


def main(argv):
    del argv
    _maybe_initialize_distributed()
    _quiet_libraries()
    runtime.enable_compilation_cache(runtime.cache_dir_setting(FLAGS.compilation_cache_dir))
    if jax.process_index() != 0:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("rankseg_jax").setLevel(logging.WARNING)
    config = FLAGS.config
    if FLAGS.mode == "train":
        return _train(config)
    import rankseg_jax
    from rankseg_jax import config as config_lib
    from rankseg_jax.config import serialization
    if FLAGS.mode == "predict":  # checked before the model is loaded
        if not FLAGS.input or not FLAGS.output:
            raise app.UsageError("--mode=predict needs --input and --output")
        if FLAGS.labels and not pathlib.Path(FLAGS.labels).is_dir():
            raise app.UsageError(f"--labels={FLAGS.labels!r} is not a folder")
    if FLAGS.mode == "export":  # refused before any work
        if not FLAGS.output:
            raise app.UsageError("--mode=export needs --output (the artifact file)")
        if pathlib.Path(FLAGS.output).exists() and not FLAGS.overwrite:
            raise app.UsageError(f"--output={FLAGS.output!r} exists; pass --overwrite to "
                                 "replace it")
    source, step = checkpoint_source(FLAGS.checkpoint, FLAGS.workdir, FLAGS.mode)
    if config is None:
        config = serialization.load(source)
    else:
        warn_config_differences(config, source)
    config_lib.validate(config, check_files=False)
    if FLAGS.mode == "eval":  # the dataset must be there; the run's init weights need not
        from rankseg_jax.config import validation
        validation.validate_data(config, check_files=True)
    config, model = rankseg_jax.load_model(source, config, step=step)
    if FLAGS.mode == "eval":
        from rankseg_jax.evaluation import evaluate
        evaluate.evaluate(config, model, FLAGS.workdir or None)
    elif FLAGS.mode == "predict":
        from rankseg_jax.evaluation import predict
        predict.predict(config, model, FLAGS.input, FLAGS.output,
                        label_dir=FLAGS.labels or None)
    else:
        from rankseg_jax.evaluation import export
        hw = tuple(int(v) for v in FLAGS.export_size)
        try:
            exported = export.export_inference(config, model, hw,
                                               platforms=tuple(FLAGS.platforms) or None)
        except ValueError as e:
            raise app.UsageError(f"--platforms: {e}") from e
        meta = export.export_metadata(config, model, hw, exported)
        meta.update(weights=str(source), step=step or "latest")
        export.save_exported(exported, FLAGS.output, meta, overwrite=FLAGS.overwrite)
        print(f"wrote {FLAGS.output} (input [B, {hw[0]}, {hw[1]}, 3] float32, normalised; "
              f"platforms {','.join(exported.platforms)}; load with "
              "rankseg_jax.evaluation.export.load_exported)")


def _train(config) -> int:
    if config is None:
        raise app.UsageError("--config is required for training")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required for training")
    if FLAGS.profile:
        config.train.profile_steps = parse_profile(FLAGS.profile)
    from rankseg_jax import run_info
    from rankseg_jax.train import loop
    info = run_info.collect(config, config_file=config_flags.get_config_filename(
        FLAGS["config"]), overrides=config_flags.get_override_values(FLAGS["config"]))
    return loop.exit_status(loop.train_and_evaluate(config, FLAGS.workdir, info=info))


def parse_profile(value: str) -> tuple[int, int]:
    """'10:15' -> (10, 15) (train.profile_steps); raises UsageError otherwise."""
    try:
        start, stop = (int(v) for v in value.split(":"))
    except ValueError:
        raise app.UsageError(f"--profile={value!r}: expected START:STOP step numbers, "
                             "e.g. --profile=10:15") from None
    return start, stop


def checkpoint_source(checkpoint: str, workdir: str, mode: str) -> tuple[str, str | None]:
    """(weight source, step) from --checkpoint and --workdir.

    --checkpoint=best|latest|N names a step of the run in --workdir; any other value is the
    weight source itself (run dir, params-only dir, file); without it, --workdir's latest.
    """
    from rankseg_jax import checkpointing

    if checkpoint and checkpointing.is_step_choice(checkpoint):
        if not workdir:
            raise app.UsageError(f"--checkpoint={checkpoint} names a step of a training run: "
                                 "pass the run directory as --workdir")
        return workdir, checkpoint
    source = checkpoint or workdir
    if not source:
        raise app.UsageError(f"--mode={mode} needs --checkpoint or a --workdir holding "
                             "checkpoints")
    return source, None


def warn_config_differences(config, source: str) -> None:
    """Prints the options in which the given --config differs from the run's config.json
    (`option: run=X, given=Y`). Model options may change the parameter shapes (then loading
    refuses, naming the parameters) or only the computation; other options affect
    evaluation/prediction only: the given values are used."""
    from rankseg_jax.config import serialization

    path = serialization.find_run_config(source)
    if path is None:
        return
    diffs = serialization.differences(serialization.load(path.parent), config)
    if not diffs:
        return
    model = [d for d in diffs if d[0].startswith("model.")]
    rest = [d for d in diffs if not d[0].startswith("model.")]
    lines = [f"warning: --config differs from {path}:"]
    if model:
        lines += ["model options (the weights load only if the parameter shapes still fit):",
                  serialization.format_differences(model)]
    if rest:
        lines += ["other options (evaluation/prediction use the given values):",
                  serialization.format_differences(rest)]
    print("\n".join(lines), file=sys.stderr, flush=True)


def _errors() -> dict:
    """Refusals printed as one line (no traceback) -> exit status."""
    from rankseg_jax.checkpointing import CheckpointError
    from rankseg_jax.config import ConfigError
    from rankseg_jax.train.workdir_lock import WorkdirLocked
    return {ConfigError: 2, WorkdirLocked: 1, CheckpointError: 1}


def run() -> None:
    """Console-script entry point (`rankseg-jax`)."""
    runtime.restart_with_malloc_tunables()  # returns at once unless it restarts the process
    runtime.configure_cpu_flags()  # before anything initialises a jax backend
    errors = _errors()
    try:
        from rankseg_jax.config import validation
        validation.check_override_names(sys.argv[1:])
        app.run(main)
    except tuple(errors) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(next(code for kind, code in errors.items() if isinstance(e, kind)))

if __name__ == "__main__":
    run()
