"""Converts a local dataset download (mmseg folder layout) into ArrayRecord shards.

    python -m data.prepare --dataset=ade20k --src=/path/ADEChallengeData2016 --out=data/ade20k

Every pair is fully decoded and validated first (corrupt or truncated image, label value outside
[0, K) other than the ignore value, size mismatch, missing pair, wrong bit depth): the first
defect aborts with an error naming the file, so a prepared dataset never holds a bad example.

Output in --out:
  {split}.array_record-{i:05d}-of-{n:05d}   records in the schema of `rankseg_jax/sources.py`
                                            (original image and label file bytes + name)
  metadata.json   dataset facts, class names, palette, record schema, per-split shard list and
                  example count, and the sha256 of every input file (relative to --src).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import json
import pathlib
import sys

from PIL import Image

from rankseg_jax.datasets import DATASETS, DatasetInfo, get_dataset_info
from rankseg_jax.sources import (
    RECORD_VERSION,
    BadExampleError,
    decode_pair,
    encode_record,
    list_pairs,
)


def _pil_full_decode(data: bytes, where: str) -> None:
    # cv2 tolerates some truncated/corrupt files with a warning; PIL's full decode refuses them.
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception as e:
        raise BadExampleError(f"{where}: corrupt image ({e})") from e


def check_pair(args: tuple[str, str, str, DatasetInfo]) -> tuple[bytes, str, str]:
    """Reads and validates one pair; returns (record bytes, sha256 image, sha256 label).

    Takes (image path, label path, name, info). Raises BadExampleError naming the file.
    """
    img_path, ann_path, name, info = args
    image_bytes = pathlib.Path(img_path).read_bytes()
    label_bytes = pathlib.Path(ann_path).read_bytes()
    _pil_full_decode(image_bytes, img_path)
    decode_pair(image_bytes, label_bytes, info, name, img_path, ann_path)
    return (encode_record(name, image_bytes, label_bytes),
            hashlib.sha256(image_bytes).hexdigest(), hashlib.sha256(label_bytes).hexdigest())


def write_split(src: pathlib.Path, out: pathlib.Path, info: DatasetInfo, split: str,
                shard_size: int, num_workers: int) -> dict:
    """Validates and writes one split; returns its metadata entry (shards, count, checksums)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    pairs = list_pairs(src, info, split)
    num_shards = max(1, -(-len(pairs) // shard_size))
    shards = [f"{split}.array_record-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]
    checksums = {}
    jobs = [(img, ann, name, info) for img, ann, name in pairs]
    pool = concurrent.futures.ProcessPoolExecutor(num_workers) if num_workers > 1 else None
    try:
        results = pool.map(check_pair, jobs, chunksize=16) if pool else map(check_pair, jobs)
        writer, shard = None, -1
        for i, (pair, result) in enumerate(zip(pairs, results, strict=True)):
            (img, ann, _), (record, h_img, h_ann) = pair, result
            if i // shard_size != shard:
                if writer is not None:
                    writer.close()
                shard = i // shard_size
                # group_size:1 keeps every record individually addressable (fast random access).
                writer = ArrayRecordWriter(str(out / shards[shard]), "group_size:1")
            writer.write(record)
            checksums[str(pathlib.Path(img).relative_to(src))] = h_img
            checksums[str(pathlib.Path(ann).relative_to(src))] = h_ann
            if (i + 1) % 1000 == 0:
                print(f"{split}: {i + 1}/{len(pairs)}", file=sys.stderr)
        writer.close()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return {"num_examples": len(pairs), "shards": shards, "sha256": checksums}


def prepare(dataset: str, src: str, out: str, splits=("train", "val"), shard_size: int = 1024,
            num_workers: int = 1, class_names_file: str = "") -> pathlib.Path:
    """Converts `src` (mmseg layout of `dataset`) into `out`; returns the metadata.json path."""
    info = get_dataset_info(dataset, class_names_file=class_names_file)
    src_p, out_p = pathlib.Path(src), pathlib.Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    meta = {
        "dataset": info.name,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names),
        "palette": info.palette.tolist(),
        "ignore_index": info.ignore_index,
        "reduce_zero_label": info.reduce_zero_label,
        "label_format": info.label_format,
        "mean": list(info.mean),
        "std": list(info.std),
        "record_format": {
            "version": RECORD_VERSION,
            "layout": "uint32le n | n bytes JSON {v,name,image_len,label_len} | image | label",
            "label_semantics": "raw file bytes; conversion to training ids at read time",
        },
        "source": str(src_p.resolve()),
        "splits": {},
    }
    for split in splits:
        meta["splits"][split] = write_split(src_p, out_p, info, split, shard_size, num_workers)
    path = out_p / "metadata.json"
    path.write_text(json.dumps(meta, indent=1))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=[d for d in DATASETS
                                                              if d != "synthetic"])
    parser.add_argument("--src", required=True, help="dataset root in its mmseg layout")
    parser.add_argument("--out", required=True, help="output folder (e.g. data/ade20k)")
    parser.add_argument("--splits", default="train,val")
    parser.add_argument("--shard_size", type=int, default=1024)
    parser.add_argument("--num_workers", type=int, default=1)
    parser.add_argument("--class_names_file", default="")
    a = parser.parse_args(argv)
    try:
        path = prepare(a.dataset, a.src, a.out, tuple(a.splits.split(",")), a.shard_size,
                       a.num_workers, a.class_names_file)
    except (BadExampleError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
