"""Converts a panoptic dataset (COCO-panoptic PNG + JSON layout) into a TFDS dataset (ArrayRecord).

    python -m data.prepare --dataset=ade20k_panoptic --src=/path/ADEChallengeData2016 --out=...

(`data.prepare` dispatches panoptic datasets here.) As for the semantic datasets, every example
is fully decoded and validated first (`panoptic.decode_panoptic`: corrupt or truncated files,
size mismatches, PNG ids without a segment, segments without pixels, wrong areas, unknown
categories), the first defect aborts with an error naming the file and nothing is left behind;
missing files are found before anything is written.

Output in --out: `rankseg_<dataset>/1.0.0/` (features 'image' = original image bytes,
'panoptic' = original panoptic PNG bytes, 'label' = the semantic annotation as a PNG of raw
values when the split has one (ADE20K), 'segments_info' = the annotation's JSON list as text
(raw category ids), 'name' = the stem; JSON annotation order) and `metadata.json` (the semantic
path's fields plus the category table and, per split, the number of JSON segments absent from
their PNG: the ADE20K `stuff_under_things` quirk, reported rather than hidden).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys

import numpy as np
import tensorflow_datasets as tfds

from rankseg_jax.data.panoptic import decode_panoptic, list_panoptic
from rankseg_jax.data.prepare import RankSegBuilder
from rankseg_jax.data.registry import DatasetInfo, get_dataset_info
from rankseg_jax.data.sources import TFDS_VERSION, label_png, tfds_builder_name


def check_panoptic_example(args: tuple[dict, DatasetInfo]) -> tuple[dict, dict[str, str], int]:
    """Reads and validates one listed example (`list_panoptic` entry, info).

    Returns (TFDS example, {path: sha256} of the files read, number of segments absent from
    the PNG). Raises BadExampleError naming the file.
    """
    entry, info = args
    files = {k: pathlib.Path(entry[k]).read_bytes() for k in ("image", "panoptic", "label")
             if entry[k]}
    # decode_panoptic decodes the image with the training sources' decoder: one verdict.
    ex = decode_panoptic(files["image"], files["panoptic"], entry["segments_info"], info,
                         entry["name"], files.get("label"), where=entry["panoptic"])
    present = set(np.unique(ex["panoptic"]).tolist())
    absent = sum(s["id"] not in present for s in ex["segments_info"])
    example = {"image": files["image"], "panoptic": files["panoptic"],
               "segments_info": json.dumps(entry["segments_info"]), "name": entry["name"]}
    if "label" in files:
        example["label"] = label_png(files["label"], info, entry["label"])
    sha = {entry[k]: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    return example, sha, absent


class PanopticBuilder(RankSegBuilder, skip_registration=True):
    """TFDS builder of one panoptic dataset; `make_panoptic_builder` names it per dataset.

    Same arguments as `RankSegBuilder`; also fills `absent_segments[split]`.
    """

    RELEASE_NOTES = {TFDS_VERSION: "Original image and panoptic PNG bytes, segments_info JSON, "
                                   "semantic label PNG where the dataset has one, name."}

    def __init__(self, **kwargs):
        self.absent_segments: dict[str, int] = {}
        super().__init__(**kwargs)

    def _has_label(self) -> bool:
        return any(bool(s.label_dir) for _, s in self._dataset.splits)

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "panoptic": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8,
                                            encoding_format="png"),
            "segments_info": tfds.features.Text(),
            "name": tfds.features.Text(),
        }
        if self._has_label():
            features["label"] = tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                                    encoding_format="png")
        return tfds.core.DatasetInfo(
            builder=self, description=f"{self._dataset.name} (panoptic) for rankseg_jax",
            features=tfds.features.FeaturesDict(features), disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        listed = {s: list_panoptic(self._src, self._dataset, s) for s in self._splits}
        return {s: self._generate_examples(s, listed[s]) for s in self._splits}

    def _generate_examples(self, split: str, entries: list[dict]):  # type: ignore[override]
        import concurrent.futures

        jobs = [(e, self._dataset) for e in entries]
        n = self._num_workers
        pool = concurrent.futures.ProcessPoolExecutor(n) if n > 1 else None
        self.absent_segments[split] = 0
        try:
            results = (pool.map(check_panoptic_example, jobs, chunksize=16) if pool
                       else map(check_panoptic_example, jobs))
            for i, (example, sha, absent) in enumerate(results):
                for path, digest in sha.items():
                    self.checksums[split][str(pathlib.Path(path).relative_to(self._src))] = digest
                self.absent_segments[split] += absent
                if (i + 1) % 1000 == 0:
                    print(f"{split}: {i + 1}/{len(entries)}", file=sys.stderr)
                yield i, example
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)


def make_panoptic_builder(info: DatasetInfo) -> type[PanopticBuilder]:
    """Returns the `PanopticBuilder` subclass named `tfds_builder_name(info.name)`."""
    return type(f"PanopticBuilder_{info.name}", (PanopticBuilder,),
                {"name": tfds_builder_name(info.name)}, skip_registration=True)


def prepare_panoptic(dataset: str, src: str, out: str, splits=("train", "val"),
                     num_workers: int = 1) -> pathlib.Path:
    """Converts `src` (layout of panoptic `dataset`) into `out`; returns the metadata.json path."""
    info = get_dataset_info(dataset)
    if not info.is_panoptic:
        raise ValueError(f"{dataset!r} is not a panoptic dataset")
    src_p, out_p = pathlib.Path(src), pathlib.Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    builder = make_panoptic_builder(info)(src=src_p, dataset=info, splits=tuple(splits),
                                          num_workers=num_workers, data_dir=str(out_p),
                                          file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
    for d in ("downloads/extracted", "downloads"):  # TFDS makes an unused, empty folder
        if (out_p / d).is_dir() and not any((out_p / d).iterdir()):
            (out_p / d).rmdir()
    features = list(builder.info.features.keys())
    meta = {
        "dataset": info.name, "num_classes": info.num_classes,
        "class_names": list(info.class_names), "palette": info.palette.tolist(),
        "ignore_index": info.ignore_index, "reduce_zero_label": info.reduce_zero_label,
        "label_format": info.label_format, "mean": list(info.mean), "std": list(info.std),
        "panoptic": {"category_ids": list(info.category_ids),
                     "thing_classes": list(info.thing_classes),
                     "stuff_under_things": info.stuff_under_things},
        "tfds": {"builder": builder.name, "version": TFDS_VERSION,
                 "file_format": "array_record", "features": features,
                 "label_semantics": "raw values and JSON category ids; converted at read time"},
        "source": str(src_p.resolve()),
        "splits": {s: {"num_examples": builder.info.splits[s].num_examples,
                       "segments_absent_from_png": builder.absent_segments[s],
                       "sha256": builder.checksums[s]} for s in splits},
    }
    path = out_p / "metadata.json"
    path.write_text(json.dumps(meta, indent=1))
    return path
