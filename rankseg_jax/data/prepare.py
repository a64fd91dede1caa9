"""Converts a local dataset download (mmseg folder layout) into a TFDS dataset (ArrayRecord).

    python -m data.prepare --dataset=ade20k --src=/path/ADEChallengeData2016 --out=data/ade20k

Every pair is fully decoded and validated before it is written (corrupt or truncated image,
label value outside [0, K) other than the ignore value, size mismatch, missing pair, wrong bit
depth): the first defect aborts with an error naming the file, so a prepared dataset never
holds a bad example. Missing files are found before anything is written. No TensorFlow is
needed, to write or to read.

The dataset is built in a staging folder inside --out (`.prepare-<pid>/`) and swapped in only
when complete, so a failed or interrupted run leaves an existing prepared dataset in --out
untouched (the staging folder is removed on failure; a hard kill can leave it behind, and a
kill in the instant between the two renames of the swap leaves the previous dataset in it).

Output in --out:
  rankseg_<dataset>/1.0.0/   the TFDS dataset written by `RankSegBuilder`: ArrayRecord files
                             `rankseg_<dataset>-{split}.array_record-NNNNN-of-NNNNN` plus
                             TFDS's dataset_info.json and features.json. Features: 'image' =
                             the original image file bytes (never re-encoded), 'label' = a PNG
                             of the raw label values (`sources.label_png`), 'name' = the stem.
                             Examples keep the order of the split's listing.
  metadata.json              dataset facts, class names, palette, the TFDS builder name and
                             version, per-split example count, and the sha256 of every input
                             file (relative to --src).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import tensorflow_datasets as tfds

from rankseg_jax.data.registry import DATASETS, DatasetInfo, get_dataset_info
from rankseg_jax.data.sources import (
    TFDS_VERSION,
    BadExampleError,
    decode_pair,
    label_png,
    list_pairs,
    tfds_builder_name,
)


def check_pair(args: tuple[str, str, str, DatasetInfo]) -> tuple[dict, str, str]:
    """Reads and validates one pair; returns (TFDS example, sha256 image, sha256 label).

    Takes (image path, label path, name, info). The example is {'image': original image
    bytes, 'label': `label_png` bytes, 'name': name}. Raises BadExampleError naming the file.
    The verdict is the training sources' (`decode_pair`, one decoder: `data/decode.py`).
    """
    img_path, ann_path, name, info = args
    image_bytes = pathlib.Path(img_path).read_bytes()
    label_bytes = pathlib.Path(ann_path).read_bytes()
    decode_pair(image_bytes, label_bytes, info, name, img_path, ann_path)
    example = {"image": image_bytes, "label": label_png(label_bytes, info, ann_path),
               "name": name}
    return (example, hashlib.sha256(image_bytes).hexdigest(),
            hashlib.sha256(label_bytes).hexdigest())


class RankSegBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder of one dataset in its mmseg layout; `make_builder` names it per dataset.

    Takes the source root, the `DatasetInfo`, the splits to write and the number of validation
    worker processes. Fills `checksums[split]` (input path relative to src -> sha256) while
    generating. Builders are not registered: readers find the dataset by name in data_dir.
    """

    VERSION = tfds.core.Version(TFDS_VERSION)
    RELEASE_NOTES = {TFDS_VERSION: "Original image bytes, raw labels as PNG, name."}

    def __init__(self, *, src: pathlib.Path, dataset: DatasetInfo, splits: tuple[str, ...],
                 num_workers: int = 1, **kwargs):
        self._src, self._dataset, self._splits = src, dataset, splits
        self._num_workers = num_workers
        self.checksums: dict[str, dict[str, str]] = {s: {} for s in splits}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        label_dtype = np.uint16 if self._dataset.label_bits == 16 else np.uint8
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self._dataset.name} for rankseg_jax (data/README.md); labels hold "
                        "the raw file values, converted to training ids when read.",
            features=tfds.features.FeaturesDict({
                # encoding_format None: bytes are stored as given (JPEG for every dataset).
                "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
                "label": tfds.features.Image(shape=(None, None, 1), dtype=label_dtype,
                                             encoding_format="png"),
                "name": tfds.features.Text(),
            }),
            disable_shuffling=True,  # example i = pair i of the listing, as in the folder
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the files are local
        # List every split first, so a missing file stops the run before anything is written.
        pairs = {s: list_pairs(self._src, self._dataset, s) for s in self._splits}
        return {s: self._generate_examples(s, pairs[s]) for s in self._splits}

    def _generate_examples(self, split: str, pairs: list[tuple[str, str, str]]):
        jobs = [(img, ann, name, self._dataset) for img, ann, name in pairs]
        n = self._num_workers
        pool = concurrent.futures.ProcessPoolExecutor(n) if n > 1 else None
        try:
            results = pool.map(check_pair, jobs, chunksize=16) if pool else map(check_pair, jobs)
            for i, (pair, (example, h_img, h_ann)) in enumerate(zip(pairs, results,
                                                                    strict=True)):
                img, ann, _ = pair
                self.checksums[split][str(pathlib.Path(img).relative_to(self._src))] = h_img
                self.checksums[split][str(pathlib.Path(ann).relative_to(self._src))] = h_ann
                if (i + 1) % 1000 == 0:
                    print(f"{split}: {i + 1}/{len(pairs)}", file=sys.stderr)
                yield i, example
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)


def make_builder(info: DatasetInfo) -> type[RankSegBuilder]:
    """Returns the `RankSegBuilder` subclass named `tfds_builder_name(info.name)`."""
    name = tfds_builder_name(info.name)
    return type(f"RankSegBuilder_{info.name}", (RankSegBuilder,), {"name": name},
                skip_registration=True)


def prepare(dataset: str, src: str, out: str, splits=("train", "val"), num_workers: int = 1,
            class_names_file: str = "") -> pathlib.Path:
    """Converts `src` (mmseg layout of `dataset`) into `out`; returns the metadata.json path.

    An existing prepared dataset in `out` is replaced only once the new one is complete: if
    this fails (a bad file, a full disk, an interrupt), `out` keeps its previous contents.
    """
    info = get_dataset_info(dataset, class_names_file=class_names_file)
    src_p, out_p = pathlib.Path(src), pathlib.Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    staging = out_p / f".prepare-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        builder = make_builder(info)(src=src_p, dataset=info, splits=tuple(splits),
                                     num_workers=num_workers, data_dir=str(staging),
                                     file_format="array_record")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
        (staging / "metadata.json").write_text(json.dumps(_metadata(info, builder, src_p,
                                                                    splits), indent=1))
        _swap_in(staging, out_p, builder.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # also the replaced dataset, set aside
    return out_p / "metadata.json"


def _metadata(info: DatasetInfo, builder: RankSegBuilder, src: pathlib.Path, splits) -> dict:
    """The contents of metadata.json (module doc)."""
    return {
        "dataset": info.name,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "palette": info.palette.tolist(),
        "ignore_index": info.ignore_index,
        "reduce_zero_label": info.reduce_zero_label,
        "label_format": info.label_format,
        "mean": list(info.mean),
        "std": list(info.std),
        "tfds": {
            "builder": builder.name,
            "version": TFDS_VERSION,
            "file_format": "array_record",
            "features": {"image": "original image file bytes",
                         "label": "PNG of the raw label values (original PNG, or lossless "
                                  "16-bit PNG of a TIFF / index PNG of a palette PNG)",
                         "name": "file stem"},
            "label_semantics": "raw values; conversion to training ids at read time",
        },
        "source": str(src.resolve()),
        "splits": {s: {"num_examples": builder.info.splits[s].num_examples,
                       "sha256": builder.checksums[s]} for s in splits},
    }


def _swap_in(staging: pathlib.Path, out: pathlib.Path, name: str) -> None:
    """Moves the finished `staging/<name>` and `staging/metadata.json` into `out`; the
    dataset they replace is moved into `staging` (deleted with it by the caller)."""
    new, old = staging / name, out / name
    if old.exists():
        os.rename(old, staging / f"replaced-{name}")
    try:
        os.rename(new, old)
    except OSError:
        if (staging / f"replaced-{name}").exists():
            os.rename(staging / f"replaced-{name}", old)
        raise
    os.replace(staging / "metadata.json", out / "metadata.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=[d for d in DATASETS
                                                              if d != "synthetic"])
    parser.add_argument("--src", required=True, help="dataset root in its mmseg layout")
    parser.add_argument("--out", required=True, help="output folder (e.g. data/ade20k)")
    parser.add_argument("--splits", default="train,val")
    parser.add_argument("--num_workers", type=int, default=1,
                        help="processes that read and validate pairs")
    parser.add_argument("--class_names_file", default="")
    a = parser.parse_args(argv)
    try:
        if get_dataset_info(a.dataset).is_panoptic:  # COCO-panoptic layouts: own builder
            from rankseg_jax.data.prepare_panoptic import prepare_panoptic

            path = prepare_panoptic(a.dataset, a.src, a.out, tuple(a.splits.split(",")),
                                    a.num_workers)
        else:
            path = prepare(a.dataset, a.src, a.out, tuple(a.splits.split(",")), a.num_workers,
                           a.class_names_file)
    except (BadExampleError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def run() -> None:
    """Console-script entry point (`rankseg-prepare`)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
