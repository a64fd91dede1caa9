"""grain input pipelines: train batches per process, eval examples one at a time.

Train chain (all random-access until the batch, so order and augmentation are functions of
(seed, epoch, index) and the iterator state is just a position):

    source -> seed -> shuffle -> repeat -> random_map(train_transform) -> [p::P] -> batch(b)
           -> to_iter_dataset -> [mp_prefetch(num_workers)] -> (pop skip counts)

The shuffle and the augmentation are keyed by the *global* index (epoch * n + position), and
process p then takes every P-th element. So the set of examples in global batch t, and each one's
augmentation, do not depend on the number of processes (only their order inside the batch does),
and two processes never share augmentation streams. This is the "per-process slice of the
index space" of the design, taken after the shuffle instead of before it.

Train batches: {'image': float32 [b,H,W,3] normalised RGB (NHWC), 'label': int32 [b,H,W]}, with
b = train.batch_size / process_count. `to_global` turns them into global jax.Arrays.

The augmentation is the host's: `transforms.train_transform` (mmseg) for Segmenter, and for
Mask2Former (`model.arch='mask2former'`) the official detectron2 mappers of
`mask_former_mappers.train_mapper` (semantic, or panoptic for a panoptic dataset), whose
batches add the mask-classification targets {'target_classes': int32 [b,T], 'target_masks':
bool [b,T,H,W], 'target_valid': bool [b,T]} (T = data.max_targets); an image with more
targets is a bad example (`data.bad_example_policy`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading

import grain
import jax
import numpy as np
from absl import flags

from rankseg_jax.data import mask_former_mappers, panoptic, transforms
from rankseg_jax.data.registry import dataset_info
from rankseg_jax.data.sources import ArrayRecordSource, BadExampleError, FolderSource
from rankseg_jax.data.synthetic import SyntheticSource
from rankseg_jax.data.synthetic_panoptic import SyntheticPanopticSource

_SKIPPED = "_skipped"


class BadExampleCounter:
    """Thread-safe count of examples skipped under `data.bad_example_policy='skip'`.

    The trainer passes one to `make_train_iterator` and logs `.count`. The count is per run (not
    part of the iterator checkpoint): after a restore it restarts at 0.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.count += int(n)


# --------------------------------------------------------------------------- config -> parts


def make_source(config, split: str):
    """Builds the random-access source of `split` ("train", "val") from `config.data`.

    Returns an object with __len__ and __getitem__ -> {'image','label','name'} (sources.py;
    panoptic datasets add 'panoptic' and 'segments_info', data/panoptic.py).
    """
    info = dataset_info(config)
    d = config.data
    if d.format == "synthetic" and d.name == "synthetic_panoptic":
        s = d.synthetic
        return SyntheticPanopticSource(
            s.num_train if split == "train" else s.num_val, s.image_size, s.num_things,
            info.num_classes - s.num_things, s.max_instances, seed=config.seed, split=split)
    if d.format == "synthetic":
        return SyntheticSource.from_config(config, split)
    if not d.root:
        raise ValueError(f"data.root is empty; data.format={d.format!r} needs a dataset root")
    if info.is_panoptic:
        cls = panoptic.PanopticFolderSource if d.format == "folder" else \
            panoptic.PanopticArrayRecordSource
        return cls(d.root, info, split)
    if d.format == "folder":
        return FolderSource(d.root, info, split)
    return ArrayRecordSource(d.root, info, split)


@dataclasses.dataclass
class GuardedSource:
    """Applies `data.bad_example_policy` around a source.

    'fail': errors propagate (they name the file). 'skip': a bad index i is replaced by the next
    good index (i+1, i+2, ... mod n) and the element gets `_skipped` = the number of bad
    examples passed over, which the pipeline adds to a `BadExampleCounter`. Replacing rather than
    dropping keeps every batch full and the pipeline random-access (hence resumable).
    """

    source: object
    policy: str

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        if self.policy == "fail":
            return self.source[index]
        n = len(self.source)
        for skipped in range(n):
            try:
                ex = self.source[(index + skipped) % n]
            except BadExampleError as e:
                logging.warning("skipping bad example: %s", e)
                continue
            ex[_SKIPPED] = np.int32(skipped)
            return ex
        raise BadExampleError(f"every example of {self.source!r} is bad")


def _train_fn(ex: dict, rng: np.random.Generator, *, transform, **kw) -> dict:
    out = transform(ex, rng, **kw)
    if _SKIPPED in ex:
        out[_SKIPPED] = ex[_SKIPPED]
    return out


def _train_parts(config, info):
    """(source wrapper, transform fn) of the training chain for `config.model.arch`."""
    d = config.data
    if config.model.arch != "mask2former":
        return (lambda src: src), functools.partial(
            _train_fn, transform=transforms.train_transform, scale=tuple(d.train_scale),
            ratio_range=tuple(d.ratio_range), crop=tuple(d.crop_size),
            cat_max_ratio=d.cat_max_ratio, flip_prob=d.flip_prob, photometric=d.photometric,
            mean=tuple(d.mean), std=tuple(d.std), ignore_index=info.ignore_index)
    # Official DATASET_MAPPER_NAME: mask_former_panoptic on panoptic data, else semantic.
    pan = info.is_panoptic
    wrap = functools.partial(mask_former_mappers.TargetLimitSource,
                             num_classes=info.num_classes, max_targets=d.max_targets,
                             panoptic=pan)
    return wrap, functools.partial(
        _train_fn, transform=mask_former_mappers.train_mapper, panoptic=pan,
        min_sizes=tuple(d.min_size_train), max_size=d.max_size_train, crop=tuple(d.crop_size),
        single_category_max_area=d.cat_max_ratio, color_aug=d.photometric,
        flip_prob=d.flip_prob, mean=tuple(d.mean), std=tuple(d.std),
        ignore_index=info.ignore_index, num_classes=info.num_classes,
        max_targets=d.max_targets)


def _count_skipped(batch: dict, counter: BadExampleCounter | None) -> dict:
    skipped = batch.pop(_SKIPPED, None)
    if skipped is not None and counter is not None:
        counter.add(np.sum(skipped))
    return batch


# --------------------------------------------------------------------------- train


def train_dataset(config, *, process_index: int, process_count: int) -> grain.IterDataset:
    """The per-process training `grain.IterDataset` (see module doc for the chain).

    Yields {'image': float32 [b,ch,cw,3], 'label': int32 [b,ch,cw]} (+ the Mask2Former
    targets, module doc; + '_skipped' int32 [b] under the 'skip' policy),
    b = train.batch_size // process_count.
    """
    d = config.data
    info = dataset_info(config)
    if config.train.batch_size % process_count:
        raise ValueError(f"train.batch_size={config.train.batch_size} is not divisible by the "
                         f"process count {process_count}")
    wrap, fn = _train_parts(config, info)
    source = GuardedSource(wrap(make_source(config, "train")), d.bad_example_policy)
    ds = (grain.MapDataset.source(source).seed(config.seed).shuffle().repeat()
          .random_map(fn))
    ds = ds[process_index::process_count]
    ds = ds.batch(config.train.batch_size // process_count, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=d.read_threads,
                                              prefetch_buffer_size=d.prefetch))
    if d.num_workers > 0:
        # grain's workers read absl flags; outside an absl app (tests, notebooks) they are not
        # parsed yet, so take the defaults rather than crash.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers,
                                                         per_worker_buffer_size=d.prefetch))
    return it


def make_train_iterator(config, *, process_index: int | None = None,
                        process_count: int | None = None,
                        counter: BadExampleCounter | None = None) -> grain.DatasetIterator:
    """Returns the stateful training iterator of this process.

    Args:
      config: the full config (uses data.*, train.batch_size, model.num_classes, seed).
      process_index, process_count: default to jax.process_index()/process_count().
      counter: optional `BadExampleCounter` incremented by skipped bad examples.
    Returns:
      A `grain.DatasetIterator`; next() gives {'image': float32 [b,H,W,3], 'label': int32
      [b,H,W]}. `get_state()`/`set_state()` save and restore the position; it also works as
      `grain.checkpoint.CheckpointSave(it)` / `CheckpointRestore(it)` in an orbax Composite.
      Call `.close()` when done if data.num_workers > 0.
    """
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    ds = train_dataset(config, process_index=pi, process_count=pc)
    ds = ds.map(functools.partial(_count_skipped, counter=counter))
    return iter(ds)


def to_global(batch: dict, sharding: jax.sharding.Sharding) -> dict:
    """Assembles per-process numpy batches into global jax.Arrays.

    Takes {'image': [b,H,W,3], 'label': [b,H,W]} (this process's rows) and a sharding whose
    first axis splits the batch; returns the same dict of global arrays [B,...], B = b * P.
    """
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


# --------------------------------------------------------------------------- eval


def _eval_fn(ex: dict, *, scale, mean, std) -> dict:
    return transforms.eval_transform(ex, scale=scale, mean=mean, std=std)


class _EvalSource(GuardedSource):
    # Evaluation never substitutes an image: under 'skip' a bad example becomes None and is
    # dropped (and logged), under 'fail' it raises.
    def __getitem__(self, index: int):
        if self.policy == "fail":
            return self.source[index]
        try:
            return self.source[index]
        except BadExampleError as e:
            logging.warning("skipping bad eval example: %s", e)
            return None


def make_eval_examples(config, split: str = "val", *, process_index: int = 0,
                       process_count: int = 1) -> grain.IterDataset:
    """Evaluation examples, one image at a time, in source order.

    Args:
      config: the full config (data.*, test.max_images).
      split: "val" (or "train").
      process_index, process_count: optional slice [p::P] of the examples for multi-host eval.
    Returns:
      An iterable `grain.IterDataset` of {'image': float32 [h,w,3] resized to data.test_scale
      (keep ratio) and normalised, 'label': int32 [H0,W0] at original resolution, 'name': str}.
    """
    d = config.data
    source = make_source(config, split)
    ds = grain.MapDataset.source(_EvalSource(source, d.bad_example_policy))
    if config.test.max_images:
        ds = ds[: config.test.max_images]
    ds = ds[process_index::process_count]
    ds = ds.filter(lambda ex: ex is not None)
    ds = ds.map(functools.partial(_eval_fn, scale=tuple(d.test_scale), mean=tuple(d.mean),
                                  std=tuple(d.std)))
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=d.read_threads,
                                                prefetch_buffer_size=d.prefetch))
