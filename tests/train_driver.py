"""Subprocess driver for the training tests (multi-device, multi-process, kill/resume).

    python tests/train_driver.py WORKDIR '{"train.steps": 4, ...}' [--kill-at-save N]
        [--signal-at-step N --signal SIGTERM|SIGINT] [--block-at-save N]
        [--process-id i --num-processes n --coordinator host:port] [--dump params.npz]
        [--arch mask2former]

Builds `helpers.small_train_config()` (Segmenter) or `helpers.mask2former_train_config()`
(`--arch mask2former`) with the JSON overrides, runs train_and_evaluate and (process 0) dumps
the final params to an .npz keyed by '/'-joined path. Prints `RESULT {...}` and exits with
`loop.exit_status` (130 after SIGINT).
  --kill-at-save N: SIGKILL itself when about to save step N (earlier saves committed).
  --signal-at-step N: sends itself --signal while step N runs (before its batch is placed).
  --block-at-save N: sleeps forever when about to save step N (a trainer that is busy).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("overrides")
    ap.add_argument("--kill-at-save", type=int, default=0)
    ap.add_argument("--signal-at-step", type=int, default=0)
    ap.add_argument("--signal", default="SIGTERM")
    ap.add_argument("--block-at-save", type=int, default=0)
    ap.add_argument("--process-id", type=int, default=0)
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--coordinator", default="")
    ap.add_argument("--dump", default="")
    ap.add_argument("--arch", default="segmenter", choices=("segmenter", "mask2former"))
    args = ap.parse_args()

    import jax
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import numpy as np
    from helpers import mask2former_train_config, small_train_config

    from rankseg_jax import checkpointing
    from rankseg_jax.data import pipeline as input_pipeline
    from rankseg_jax.train import loop as train

    make = mask2former_train_config if args.arch == "mask2former" else small_train_config
    config = make(**json.loads(args.overrides))
    if args.kill_at_save:
        orig = checkpointing.Checkpointer.save

        def save(self, step, *a, **kw):
            if step == args.kill_at_save:
                self.wait_until_finished()  # earlier saves are committed
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no polite stop
            return orig(self, step, *a, **kw)

        checkpointing.Checkpointer.save = save

    if args.block_at_save:
        orig_save_b = checkpointing.Checkpointer.save

        def save_or_block(self, step, *a, **kw):
            while step == args.block_at_save:
                time.sleep(1)
            return orig_save_b(self, step, *a, **kw)

        checkpointing.Checkpointer.save = save_or_block

    if args.signal_at_step:
        orig_to_global, calls = input_pipeline.to_global, []

        def signal_during_step(batch, sharding):
            calls.append(1)
            if len(calls) == args.signal_at_step:
                os.kill(os.getpid(), getattr(signal, args.signal))  # e.g. a preemption notice
            return orig_to_global(batch, sharding)

        input_pipeline.to_global = signal_during_step

    result = train.train_and_evaluate(config, args.workdir)
    if args.dump:
        # The final params through a restore of the last checkpoint (always saved).
        from rankseg_jax import sharding
        from rankseg_jax.train import step as ts
        setup = ts.make_setup(config, sharding.make_mesh(config))
        params = train.pretrained_params(setup, args.workdir)
        flat = {}
        for kp, x in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
            flat[name] = np.asarray(x.addressable_data(0)) if not x.is_fully_addressable \
                else np.asarray(x)
        if jax.process_index() == 0:
            np.savez(args.dump, **flat)
    print("RESULT", json.dumps({"step": result["step"], "init": result["init"],
                                "preempted": result["preempted"],
                                "stopped_by": result["stopped_by"]}), flush=True)
    sys.exit(train.exit_status(result))


if __name__ == "__main__":
    main()
