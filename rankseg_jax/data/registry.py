"""Registry of dataset definitions: classes, palettes, label semantics, layouts, scales.

`DatasetInfo` holds every fact about a dataset that the sources, transforms and converters need,
so no other module hard-codes a class count, an ignore value or a folder name.

Label semantics (mmseg-0.17 `LoadAnnotations` and the official dataset configs):
  * uint8 datasets with `reduce_zero_label` (ADE20K, COCO-Stuff-10k, PASCAL-Context-59): mmseg
    maps 0 -> 255, then label - 1, then 254 -> 255; training ids 0..K-1, ignore 255.
  * int16 datasets (ADE20K-Full TIFF, COCO+LVIS PNG): the raw uint16 file is read as int16, so
    65535 becomes -1. COCO+LVIS additionally reduces zero (label - 1, then -2 -> -1).
    Ignore is -1 for both.

Class names: ADE20K-150, COCO-Stuff-171 and PASCAL-Context-60/59 are the mmseg `CLASSES` tuples
(ADE's 'bed ' is written without mmseg's trailing space). ADE20K-Full (847) and COCO+LVIS (1284)
use *placeholder* names `class_0000`, ... because the real lists are too long to transcribe
reliably; pass a names file (one name per line) to `load_class_names` /
`config.data.class_names_file` to use the real ones.

Panoptic datasets (`ade20k_panoptic`, `coco_panoptic`; `DatasetInfo.is_panoptic`): a split also
names the folder of panoptic PNGs and the COCO-panoptic JSON (`Split.panoptic_dir`,
`panoptic_json`); `category_ids[i]` is the JSON `category_id` of training id i (its position in
the JSON's `categories`, as detectron2 registers them) and `thing_classes` the training ids of
things. Their semantic label is ADE20K's own annotation (same conversion as `ade20k`) or, with
`label_dir` empty (COCO), derived from the panoptic PNG. Read them with `data/panoptic.py`.

Palettes (`palettes.py`; every picture the project draws uses `DatasetInfo.palette`): ADE20K
uses mmseg's `ADE20KDataset.PALETTE` (`ADE20K_PALETTE`, typed from memory of mmseg; only its
length is checked) *repaired*: 21 of its 150 colours are indistinguishable from an earlier one
(CIE76 difference < 2.3, e.g. 'road' and 'skyscraper' share (140, 140, 140)) or close to the
previous class id's (< 15, e.g. 'refrigerator' (20, 255, 0) / 'grandstand' (31, 255, 0)), and
those are replaced by well-separated colours; the other 129 keep mmseg's colours. Every other
dataset except COCO-panoptic (detectron2's category colours, kept: every pair differs by
> 11, neighbours by > 14) has no official palette we could check, and gets a generated
well-separated one (`palettes.generated_palette`): neighbouring class ids never get similar
colours, and no class is near-black (black is the ignore colour in pictures).

The synthetic dataset's class names come from `synthetic.class_names`: scene-specific names
("sand", "tree", ...) that follow the dataset's scene structure.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from rankseg_jax.data import palettes, synthetic
from rankseg_jax.data import panoptic_categories as pc

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB
IMAGENET_STD = (58.395, 57.12, 57.375)
HALF_MEAN = (127.5, 127.5, 127.5)  # the `meanstd0.5` configs: pixels in [-1, 1]
HALF_STD = (127.5, 127.5, 127.5)

# Label file formats a source knows how to decode.
LABEL_FORMATS = ("png8", "png16", "tiff16", "none")


@dataclasses.dataclass(frozen=True)
class Split:
    """Where one split lives under the dataset root (paths relative to the root)."""

    image_dir: str
    label_dir: str
    list_file: str = ""  # one image stem per line; empty = every image in image_dir
    panoptic_dir: str = ""  # panoptic datasets: folder of the COCO-panoptic RGB PNGs
    panoptic_json: str = ""  # panoptic datasets: the COCO-panoptic JSON (segments_info)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Everything the data side knows about one dataset.

    Attributes:
      name: registry key.
      num_classes: K, the number of training classes (ids 0..K-1).
      class_names: K names, index = training id.
      palette: uint8 [K, 3] RGB colours for visualisation.
      ignore_index: the label value of ignored pixels *after* conversion (255 or -1).
      reduce_zero_label: whether the raw label 0 means "unlabelled" and ids shift down by one.
      label_format: "png8" | "png16" | "tiff16" | "none" (synthetic).
      label_bits: 8 or 16, the bit depth of the label file.
      mean, std: RGB normalisation constants of the official configs.
      image_suffix, label_suffix: file-name endings, appended to the image stem.
      splits: (split name, Split) pairs; "val" is the evaluation split.
      train_scale, test_scale: mmseg (long, short) image scales.
      crop_size: (h, w) training crop.
      category_ids: panoptic datasets only: the JSON `category_id` of each training id.
      thing_classes: panoptic datasets only: the training ids of thing classes (ascending).
      stuff_under_things: panoptic datasets only: the official preparation pasted things over
        stuff after measuring the stuff `area`s, so a JSON `area` may exceed the segment's pixel
        count and a segment may be absent from the PNG (ADE20K); False = both must agree.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: np.ndarray = dataclasses.field(compare=False, repr=False)
    ignore_index: int = 255
    reduce_zero_label: bool = False
    label_format: str = "png8"
    label_bits: int = 8
    mean: tuple[float, float, float] = HALF_MEAN
    std: tuple[float, float, float] = HALF_STD
    image_suffix: str = ".jpg"
    label_suffix: str = ".png"
    splits: tuple[tuple[str, Split], ...] = ()
    train_scale: tuple[int, int] = (2048, 512)
    test_scale: tuple[int, int] = (2048, 512)
    crop_size: tuple[int, int] = (512, 512)
    category_ids: tuple[int, ...] = ()
    thing_classes: tuple[int, ...] = ()
    stuff_under_things: bool = False

    @property
    def is_panoptic(self) -> bool:
        """True for panoptic datasets (they have a panoptic category table)."""
        return bool(self.category_ids)

    def split(self, name: str) -> Split:
        """Returns the `Split` called `name`; raises KeyError listing the known splits."""
        for key, value in self.splits:
            if key == name:
                return value
        raise KeyError(f"dataset {self.name!r} has no split {name!r}; known: "
                       f"{[k for k, _ in self.splits]}")


def placeholder_names(num_classes: int) -> tuple[str, ...]:
    """Returns ('class_0000', 'class_0001', ...) of length K, for datasets whose names we lack."""
    return tuple(f"class_{i:04d}" for i in range(num_classes))


def load_class_names(path: str | pathlib.Path, num_classes: int) -> tuple[str, ...]:
    """Reads a names file (one name per line, blank lines skipped); returns K names.

    Raises ValueError naming the file when the count is not K.
    """
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    names = tuple(line.strip() for line in lines if line.strip())
    if len(names) != num_classes:
        raise ValueError(f"{path}: {len(names)} class names, expected {num_classes}")
    return names


ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag")

ADE20K_PALETTE = (
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3),
    (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7),
    (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82),
    (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250),
    (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71),
    (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7),
    (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255),
    (160, 150, 20), (0, 163, 255), (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0),
    (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255),
    (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255),
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0),
    (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255),
    (173, 255, 0), (0, 255, 153), (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102),
    (255, 173, 0), (255, 0, 20), (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255),
    (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255),
    (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0),
    (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255),
    (0, 255, 92), (184, 0, 255), (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112),
    (92, 255, 0), (0, 224, 255), (112, 224, 255), (70, 184, 160), (163, 0, 255),
    (153, 0, 255), (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235),
    (133, 255, 0), (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212),
    (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255),
    (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255), (71, 0, 255),
    (122, 0, 255), (0, 255, 184), (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0),
    (25, 194, 194), (102, 255, 0), (92, 0, 255))

COCO_STUFF_CLASSES = pc.COCO_THING_NAMES + (
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net",
    "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield",
    "railing", "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea",
    "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood")

PASCAL_CONTEXT60_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves",
    "sidewalk", "sign", "sky", "snow", "sofa", "table", "track", "train", "tree", "truck",
    "tvmonitor", "wall", "water", "window", "wood")

_ADE_SPLITS = (("train", Split("images/training", "annotations/training")),
               ("val", Split("images/validation", "annotations/validation")))
_C10K_SPLITS = (
    ("train", Split("images/train2014", "annotations/train2014", "imageLists/train.txt")),
    ("val", Split("images/test2014", "annotations/test2014", "imageLists/test.txt")))
_C164K_SPLITS = (("train", Split("images/train2017", "annotations/train2017")),
                 ("val", Split("images/val2017", "annotations/val2017")))
_PC_SPLITS = (
    ("train", Split("JPEGImages", "SegmentationClassContext",
                    "ImageSets/SegmentationContext/train.txt")),
    ("val", Split("JPEGImages", "SegmentationClassContext",
                  "ImageSets/SegmentationContext/val.txt")))
_ADEFULL_SPLITS = (("train", Split("train/image", "train/label")),
                   ("val", Split("val/image", "val/label")))
_LVIS_SPLITS = (("train", Split("images/train2017", "lvis_mask/train2017")),
                ("val", Split("images/val2017", "lvis_mask/val2017")))
# Panoptic layouts (scales/crops: Mask2Former's short side 640 max 2560 / 800 max 1333, crops
# 640 / 1024): ADEChallengeData2016 after Mask2Former's `datasets/prepare_ade20k_pan_seg.py`,
# and COCO's own release (detectron2 `coco/{train,val}2017`, `coco/panoptic_*`).
_ADE_PAN_SPLITS = tuple(
    (s, Split(f"images/{d}", f"annotations/{d}", panoptic_dir=f"ade20k_panoptic_{s}",
              panoptic_json=f"ade20k_panoptic_{s}.json"))
    for s, d in (("train", "training"), ("val", "validation")))
_COCO_PAN_SPLITS = tuple(
    (s, Split(f"{s}2017", "", panoptic_dir=f"panoptic_{s}2017",
              panoptic_json=f"annotations/panoptic_{s}2017.json")) for s in ("train", "val"))


def _registry() -> dict[str, DatasetInfo]:
    pc_scale = (4160, 520)  # (520*8, 520): short side 520, as RankSeg/Segmenter (P6)
    return {
        "ade20k": DatasetInfo(
            "ade20k", 150, ADE20K_CLASSES, palettes.repaired_palette(ADE20K_PALETTE)[0], 255,
            True, splits=_ADE_SPLITS),
        "coco_stuff10k": DatasetInfo(
            "coco_stuff10k", 171, COCO_STUFF_CLASSES, palettes.generated_palette(171), 255,
            True, mean=IMAGENET_MEAN, std=IMAGENET_STD, label_suffix="_labelTrainIds.png",
            splits=_C10K_SPLITS),
        "coco_stuff164k": DatasetInfo(
            "coco_stuff164k", 171, COCO_STUFF_CLASSES, palettes.generated_palette(171), 255,
            False, mean=IMAGENET_MEAN, std=IMAGENET_STD, label_suffix="_labelTrainIds.png",
            splits=_C164K_SPLITS),
        "pascal_context60": DatasetInfo(
            "pascal_context60", 60, PASCAL_CONTEXT60_CLASSES, palettes.generated_palette(60), 255,
            False, splits=_PC_SPLITS, train_scale=pc_scale, test_scale=pc_scale,
            crop_size=(480, 480)),
        "pascal_context59": DatasetInfo(
            "pascal_context59", 59, PASCAL_CONTEXT60_CLASSES[1:],
            palettes.generated_palette(60)[1:], 255, True, splits=_PC_SPLITS,
            train_scale=pc_scale, test_scale=pc_scale, crop_size=(480, 480)),
        "ade20k_full": DatasetInfo(
            "ade20k_full", 847, placeholder_names(847), palettes.generated_palette(847), -1,
            False, label_format="tiff16", label_bits=16, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            label_suffix=".tif", splits=_ADEFULL_SPLITS),
        "coco_lvis": DatasetInfo(
            "coco_lvis", 1284, placeholder_names(1284), palettes.generated_palette(1284), -1,
            True, label_format="png16", label_bits=16, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            splits=_LVIS_SPLITS),
        "ade20k_panoptic": DatasetInfo(
            "ade20k_panoptic", 150, ADE20K_CLASSES, palettes.repaired_palette(ADE20K_PALETTE)[0],
            255, True, mean=IMAGENET_MEAN, std=IMAGENET_STD, splits=_ADE_PAN_SPLITS,
            train_scale=(2560, 640), test_scale=(2560, 640), crop_size=(640, 640),
            category_ids=tuple(range(150)), thing_classes=pc.ADE20K_PANOPTIC_THING_IDS,
            stuff_under_things=True),
        "coco_panoptic": DatasetInfo(
            "coco_panoptic", 133, pc.COCO_PANOPTIC_NAMES,
            np.array(pc.COCO_PANOPTIC_COLORS, np.uint8), 255, False, mean=IMAGENET_MEAN,
            std=IMAGENET_STD, splits=_COCO_PAN_SPLITS, train_scale=(1333, 800),
            test_scale=(1333, 800), crop_size=(1024, 1024),
            category_ids=pc.COCO_PANOPTIC_CATEGORY_IDS,
            thing_classes=tuple(range(pc.COCO_PANOPTIC_NUM_THINGS))),
    }


# The procedural datasets (no files; `data.format='synthetic'` exactly for these): the
# many-class semantic one and the panoptic one (`synthetic_panoptic.py`, things + stuff).
SYNTHETIC_DATASETS = ("synthetic", "synthetic_panoptic")
DATASETS = tuple(_registry()) + SYNTHETIC_DATASETS
PANOPTIC_DATASETS = tuple(k for k, v in _registry().items() if v.is_panoptic)


def synthetic_info(num_classes: int, num_scenes: int = 8) -> DatasetInfo:
    """The procedural dataset's info for K classes in S scene types (no files; ignore 255, no
    reduction; names from `synthetic.class_names`)."""
    return DatasetInfo("synthetic", num_classes, synthetic.class_names(num_classes, num_scenes),
                       palettes.generated_palette(num_classes), 255, False, label_format="none")


def get_dataset_info(name: str, *, num_classes: int | None = None,
                     class_names_file: str = "", num_scenes: int = 8,
                     num_things: int = 20) -> DatasetInfo:
    """Looks up a dataset by registry name.

    Args:
      name: one of `DATASETS`.
      num_classes: K for the synthetic datasets (required there); for real datasets, if
        given, it must equal the registry's K.
      class_names_file: optional names file replacing the registry's names (one per line).
      num_scenes: the synthetic dataset's scene count (its class names follow the scenes).
      num_things: `synthetic_panoptic`: the first num_things classes are things (1 <= T < K).
    Returns:
      The `DatasetInfo`. Raises KeyError for an unknown name, ValueError for a K mismatch.
    """
    if name in SYNTHETIC_DATASETS:
        if num_classes is None:
            raise ValueError(f"the {name} dataset needs num_classes")
        if name == "synthetic":
            info = synthetic_info(num_classes, num_scenes)
        else:
            if not 1 <= num_things < num_classes:
                raise ValueError(f"synthetic_panoptic needs 1 <= num_things ({num_things}) < "
                                 f"num_classes ({num_classes}): things first, then stuff")
            # Imported here: synthetic_panoptic imports this module.
            from rankseg_jax.data.synthetic_panoptic import synthetic_panoptic_info


            info = synthetic_panoptic_info(num_things, num_classes - num_things)
    else:
        registry = _registry()
        if name not in registry:
            raise KeyError(f"unknown dataset {name!r}; known: {list(DATASETS)}")
        info = registry[name]
        if num_classes is not None and num_classes != info.num_classes:
            raise ValueError(f"dataset {name!r} has {info.num_classes} classes, "
                             f"but num_classes={num_classes}")
    if class_names_file:
        info = dataclasses.replace(
            info, class_names=load_class_names(class_names_file, info.num_classes))
    return info


def data_config_values(name: str) -> dict:
    """The `config.data` values a dataset config should set for registry dataset `name`.

    Returns {'name', 'ignore_index', 'reduce_zero_label', 'mean', 'std', 'crop_size',
    'train_scale', 'test_scale'}; use as `config.data.update(data_config_values('ade20k'))`
    (and set `model.num_classes = get_dataset_info(name).num_classes`).
    """
    info = get_dataset_info(name, num_classes=150 if name in SYNTHETIC_DATASETS else None)
    return {"name": info.name, "ignore_index": info.ignore_index,
            "reduce_zero_label": info.reduce_zero_label, "mean": info.mean, "std": info.std,
            "crop_size": info.crop_size, "train_scale": info.train_scale,
            "test_scale": info.test_scale}


def dataset_info(config) -> DatasetInfo:
    """Returns the `DatasetInfo` of `config.data.name`, checked against the config.

    `rankseg_jax.config.validate` calls this once before anything runs. Raises ValueError
    naming the option when `data.format`, `data.ignore_index` or `data.reduce_zero_label`
    contradict the dataset (a wrong ignore
    value or a double zero-reduction would silently corrupt labels), or when
    `model.num_classes` differs from the dataset's K.
    """
    d = config.data
    if d.name not in DATASETS:
        raise ValueError(f"data.name={d.name!r} is not one of {tuple(DATASETS)}")
    if (d.name in SYNTHETIC_DATASETS) != (d.format == "synthetic"):
        raise ValueError(f"data.format={d.format!r} does not fit data.name={d.name!r}: "
                         f"use format 'synthetic' exactly for the synthetic datasets "
                         f"{SYNTHETIC_DATASETS}")
    try:
        info = get_dataset_info(d.name, num_classes=config.model.num_classes,
                                class_names_file=d.class_names_file,
                                num_scenes=d.synthetic.num_scenes,
                                num_things=d.synthetic.num_things)
    except ValueError as e:
        raise ValueError(f"model.num_classes / data.class_names_file: {e}") from e
    if d.ignore_index != info.ignore_index:
        raise ValueError(f"data.ignore_index={d.ignore_index} but {d.name} uses "
                         f"{info.ignore_index}")
    if bool(d.reduce_zero_label) != info.reduce_zero_label:
        raise ValueError(f"data.reduce_zero_label={d.reduce_zero_label} but {d.name} uses "
                         f"{info.reduce_zero_label}")
    return info
