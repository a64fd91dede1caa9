"""Procedural many-class segmentation dataset: no files, deterministic by (seed, split, index).

Why it looks the way it does (so a tiny model cannot saturate it in minutes, yet RankSeg's
image-level ranking has something to learn):
  * Scenes. Class c belongs to scene c % S. An image picks one scene and draws 2..8 classes,
    85% from that scene's pool (long-tailed: weight ~ 1/(1 + c // S)^0.8) and 15% from anywhere,
    so which classes co-occur depends on the scene, as in ADE20K.
  * Local ambiguity. Classes 2j and 2j+1 (always in different scenes when S > 1) share the same
    colour and stripe texture: a patch alone cannot tell them apart (`confusable` below).
  * Global disambiguation. Every image carries a scene-specific colour gradient (direction and
    tint vector fixed per scene) plus a random global brightness shift. Locally the gradient is
    just an offset; over the whole image its direction names the scene, and so resolves 2j/2j+1.
  * Regions are Voronoi cells of warped coordinates (several seeds per class), giving irregular
    shapes; a thin band along cell boundaries is labelled ignore (255), like real annotations.
Difficulty knobs (`config.data.synthetic.*`, defaults = the settings above):
  * confusable (G, default 2): classes G*j .. G*j+G-1 share one look, so a patch alone leaves
    G candidates; with G <= S they lie in G different scenes and the scene cue resolves them.
  * in_scene (0.85): probability that a drawn class comes from the image's scene pool; the
    rest are drawn from all K classes (out-of-context objects, which context cannot resolve).
  * scene_cue (30): amplitude in grey levels of the scene's tinted ramp (0 = no global cue
    beyond which classes co-occur).
  * tail (0.8): exponent of the long tail of class frequencies inside a scene.
  * noise (6): standard deviation of the per-pixel noise (texture difficulty).
Class names (`class_names`): each scene type has a theme ("beach", "forest", ...) and its
classes are named after it ("sand", "sea", ... ; "tree", "moss", ...), so pictures and charts
read like scenes. Names are labels only: the pixels and labels do not depend on them.
Cost: one 512x512 sample takes ~3 ms on one core (layout at 1/4, colours at 1/2 resolution).
"""

from __future__ import annotations

import cv2
import numpy as np

IGNORE_INDEX = 255
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}

# Names for the classes of each scene type, most frequent first (class c is the (c // S)-th
# class of scene c % S). Every name occurs once in the whole table.
SCENE_NAMES = (
    ("beach", ("sand", "sea", "sky", "palm", "parasol", "towel", "surfboard", "shell",
               "dune", "pier", "lifeguard hut", "kite")),
    ("forest", ("tree", "moss", "fern", "trail", "mushroom", "log", "stream", "deer",
                "bush", "boulder", "fallen leaves", "owl")),
    ("street", ("road", "building", "car", "sidewalk", "traffic light", "bus", "lamp post",
                "street sign", "bicycle", "pedestrian", "crosswalk", "awning")),
    ("kitchen", ("cabinet", "stove", "sink", "fridge", "countertop", "kettle", "pan",
                 "plate", "oven", "wall tiles", "stool", "window")),
    ("mountain", ("snow", "cliff", "glacier", "cloud", "pine", "scree", "hut", "lake",
                  "ridge", "ice", "goat", "cairn")),
    ("office", ("desk", "monitor", "keyboard", "office chair", "carpet", "whiteboard",
                "bookshelf", "printer", "desk lamp", "potted plant", "ceiling", "door")),
    ("farm", ("field", "barn", "tractor", "fence", "hay", "cow", "sheep", "silo",
              "dirt road", "orchard", "horse", "scarecrow")),
    ("harbour", ("water", "boat", "dock", "crane", "container", "buoy", "ship", "seagull",
                 "rope", "lighthouse", "quay", "fishing net")),
)


def class_names(num_classes: int, num_scenes: int = 8) -> tuple[str, ...]:
    """Names of the K synthetic classes, following the scene structure (module doc).

    Class c belongs to scene c % S and is its (c // S)-th class, so it is named after that
    scene's names (`SCENE_NAMES`, scenes beyond the table reuse it cyclically); a name used
    again gets a number ("sand 2"). Deterministic; the data do not depend on the names.
    Returns K distinct strings.
    """
    s = max(1, min(num_scenes, num_classes))  # as SyntheticSource clamps it
    names: list[str] = []
    seen: set[str] = set()
    for c in range(num_classes):
        pool = SCENE_NAMES[(c % s) % len(SCENE_NAMES)][1]
        rank = c // s
        base, n = pool[rank % len(pool)], 1
        name = base
        while name in seen:
            n += 1
            name = f"{base} {n}"
        names.append(name)
        seen.add(name)
    return tuple(names)


class SyntheticSource:
    """Random-access procedural dataset; `src[i]` returns the standard source dict.

    Args:
      num_classes: K (any K >= 2; tested with 150 and 1284).
      num_examples: length of the split.
      image_size: (H, W) of every image.
      min_classes, max_classes: range of classes per image (inclusive).
      num_scenes: S, the number of scene types.
      seed: dataset seed; the appearance of classes depends only on (K, S, G), not on it.
      split: "train" | "val" | "test" (different streams).
      confusable, in_scene, scene_cue, tail, noise: the difficulty knobs (module doc); the
        defaults give the original dataset bit for bit.
    `src[i]` -> {'image': uint8 [H,W,3] RGB, 'label': int32 [H,W] in [0,K) or 255, 'name': str}.
    Raises ValueError for settings outside their ranges.
    """

    def __init__(self, num_classes: int, num_examples: int, image_size=(512, 512),
                 min_classes: int = 2, max_classes: int = 8, num_scenes: int = 8,
                 seed: int = 0, split: str = "train", *, confusable: int = 2,
                 in_scene: float = 0.85, scene_cue: float = 30.0, tail: float = 0.8,
                 noise: float = 6.0):
        if num_classes < 2 or not 1 <= min_classes <= max_classes:
            raise ValueError(f"bad synthetic settings: K={num_classes}, "
                             f"classes per image {min_classes}..{max_classes}")
        if (confusable < 1 or not 0.0 <= in_scene <= 1.0 or scene_cue < 0 or tail < 0
                or noise < 0):
            raise ValueError(f"bad synthetic settings: confusable={confusable} (>= 1), "
                             f"in_scene={in_scene} (0..1), scene_cue={scene_cue}, tail={tail}, "
                             f"noise={noise} (>= 0)")
        self.num_classes, self.num_examples = num_classes, num_examples
        self.image_size = tuple(image_size)
        self.min_classes, self.max_classes = min_classes, min(max_classes, num_classes)
        self.num_scenes = max(1, min(num_scenes, num_classes))
        self.seed, self.split = seed, split
        self.confusable, self.in_scene, self.noise = int(confusable), float(in_scene), noise
        self._split_id = _SPLIT_IDS.get(split, 3)
        k, s = num_classes, self.num_scenes
        # Appearance tables are a function of (K, S, G) only, so train and val agree.
        arng = np.random.default_rng([k, s, 12345])
        groups = -(-k // self.confusable)  # one look per group of G classes
        self._colour = arng.uniform(50, 205, (groups, 3)).astype(np.float32)
        theta = arng.uniform(0, np.pi, groups)
        freq = arng.uniform(0.08, 0.6, groups)
        self._kx = (freq * np.cos(theta)).astype(np.float32)
        self._ky = (freq * np.sin(theta)).astype(np.float32)
        self._amp = arng.uniform(6, 28, groups).astype(np.float32)
        angle = 2 * np.pi * np.arange(s) / s + arng.uniform(0, 0.3, s)
        self._scene_dir = np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32)
        tint = arng.normal(size=(s, 3))
        self._scene_tint = (scene_cue * tint / np.linalg.norm(tint, axis=1, keepdims=True)
                            ).astype(np.float32)
        self._scene_of = np.arange(k) % s
        w = 1.0 / (1.0 + np.arange(k) // s) ** tail
        self._pools = []
        for sc in range(s):
            members = np.flatnonzero(self._scene_of == sc)
            self._pools.append((members, w[members] / w[members].sum()))

    @classmethod
    def from_config(cls, config, split: str) -> SyntheticSource:
        """The source of `split` ("train" | "val" | other) described by a validated config:
        K = `model.num_classes`, every `data.synthetic.*` option, seed = `config.seed`."""
        s = config.data.synthetic
        return cls(config.model.num_classes, s.num_train if split == "train" else s.num_val,
                   s.image_size, s.min_classes, s.max_classes, s.num_scenes, seed=config.seed,
                   split=split, confusable=s.confusable, in_scene=s.in_scene,
                   scene_cue=s.scene_cue, tail=s.tail, noise=s.noise)

    def __len__(self) -> int:
        return self.num_examples

    def _classes(self, rng: np.random.Generator, scene: int) -> np.ndarray:
        n = int(rng.integers(self.min_classes, self.max_classes + 1))
        members, p = self._pools[scene]
        chosen: list[int] = []
        while len(chosen) < n:
            if rng.random() < self.in_scene and len(members):
                c = int(rng.choice(members, p=p))
            else:
                c = int(rng.integers(self.num_classes))
            if c not in chosen:
                chosen.append(c)
        return np.array(chosen, np.int64)

    def _layout(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Voronoi cells of warped coordinates at 1/4 resolution.

        Returns (class slot per cell pixel, ignore mask), both [H/4, W/4].
        """
        H, W = self.image_size
        h, w = max(H // 4, 8), max(W // 4, 8)
        seeds = max(n, int(rng.integers(n, 3 * n + 1)))
        slot = np.concatenate([np.arange(n), rng.integers(0, n, seeds - n)])
        pts = rng.random((seeds, 2)).astype(np.float32) * np.array([h, w], np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        warp = rng.normal(size=(2, 6, 6)).astype(np.float32) * (0.12 * min(h, w))
        yy += cv2.resize(warp[0], (w, h), interpolation=cv2.INTER_CUBIC)
        xx += cv2.resize(warp[1], (w, h), interpolation=cv2.INTER_CUBIC)
        d = (yy[None] - pts[:, 0, None, None]) ** 2 + (xx[None] - pts[:, 1, None, None]) ** 2
        order = np.argsort(d, axis=0)[:2]
        nearest = slot[order[0]]
        d1 = np.take_along_axis(d, order[:1], 0)[0]
        d2 = np.take_along_axis(d, order[1:2], 0)[0]
        # Pixels almost equidistant from two cells of different classes: annotation "ignore".
        # The band is ~0.6 px at 1/4 of 512 (2-4 % of pixels) and thinner for small images.
        margin = 0.6 * min(1.0, min(h, w) / 128)
        ignore = (np.sqrt(d2) - np.sqrt(d1) < margin) & (slot[order[1]] != nearest)
        return nearest, ignore

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self._split_id, int(index)])
        H, W = self.image_size
        scene = int(rng.integers(self.num_scenes))
        classes = self._classes(rng, scene)
        slot_small, ignore_small = self._layout(rng, len(classes))
        # Render the image at half resolution and upsample once: 4x fewer float passes.
        h2, w2 = max(H // 2, 1), max(W // 2, 1)
        slot2 = cv2.resize(slot_small.astype(np.uint8), (w2, h2), interpolation=cv2.INTER_NEAREST)
        group = classes // self.confusable  # classes G*j .. G*j+G-1 look alike locally
        yy = np.arange(h2, dtype=np.float32)[:, None] * 2
        xx = np.arange(w2, dtype=np.float32)[None, :] * 2
        phase = self._ky[group][slot2] * yy + self._kx[group][slot2] * xx + rng.uniform(0, 6.3)
        image = self._colour[group][slot2] + (self._amp[group][slot2] * np.sin(phase))[..., None]
        # Scene cue: a linear ramp across the image along the scene's direction, in its tint.
        dy, dx = self._scene_dir[scene]
        ramp = (dy * (yy / H - 0.5) + dx * (xx / W - 0.5)) * 2.0
        image += ramp[..., None] * self._scene_tint[scene]
        image += rng.uniform(-20, 20)  # global brightness: absolute colour is not a cue
        image += rng.normal(0, self.noise, (h2, w2, 1)).astype(np.float32)
        image = cv2.resize(np.clip(image, 0, 255).astype(np.uint8), (W, H),
                           interpolation=cv2.INTER_LINEAR)
        slot = cv2.resize(slot_small.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST)
        ignore = cv2.resize(ignore_small.astype(np.uint8), (W, H),
                            interpolation=cv2.INTER_NEAREST).astype(bool)
        label = classes[slot].astype(np.int32)
        label[ignore] = IGNORE_INDEX
        return {"image": image, "label": label,
                "name": f"synthetic_{self.split}_{index:07d}"}
