"""Shapes: a procedural captioned image dataset with ground-truth attributes (CLEVR/ShapeWorld in miniature).

Every image is a pure function of (seed, split, index): a background colour and one or two objects, each with a
shape, colour, size and a cell of a 3x3 grid. Captions are drawn from varied templates and synonyms so a model has
to read language, not match a template. Train and test never share an image: each discrete scene is assigned to a
split by a stable hash of its attributes, and the compositional split can hold (colour, shape) pairs out of training.

What a caption names (and so what `attribute_accuracy` checks):
- one object: its shape, colour, size and position;
- two objects: each object's shape, colour and size, and the relation between them (left of / right of / above /
  below). Absolute positions of two-object scenes are not named, so they are not checked.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross")
COLORS = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (40, 80, 225),
    "yellow": (245, 215, 30),
    "purple": (140, 55, 185),
    "orange": (250, 135, 20),
    "white": (245, 245, 245),
    "black": (18, 18, 18),
}
BACKGROUNDS = {"black": (18, 18, 18), "white": (245, 245, 245), "gray": (128, 128, 128)}
SIZES = ("small", "large")
# Row-major 3x3 grid; index = 3 * row + col.
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
RELATIONS = ("left of", "right of", "above", "below")
SPLITS = ("train", "test")

# Object diameter as a fraction of the image side; a cell is 1/3 of the side, so a large object nearly fills one.
_SIZE_FRAC = {"small": 0.17, "large": 0.29}
_JITTER = 0.025  # centre jitter (fraction of the side) so equal scenes are not pixel-identical
_SUPERSAMPLE = 4  # draw at 4x and downsample: anti-aliased edges at any resolution

# ---------------------------------------------------------------------------------------------------------------
# Language: synonyms and templates.

_SHAPE_WORDS = {
    "circle": ["circle", "disc", "circle", "round disc"],
    "square": ["square", "square", "box", "square block"],
    "triangle": ["triangle", "triangle", "triangular shape"],
    "star": ["star", "star", "five-pointed star"],
    "heart": ["heart", "heart", "heart shape"],
    "cross": ["cross", "plus sign", "cross"],
}
_COLOR_WORDS = {c: [c] for c in COLORS}
_COLOR_WORDS["purple"] = ["purple", "violet"]
_COLOR_WORDS["gray"] = ["gray", "grey"]
_COLOR_WORDS["centre"] = ["centre"]
_SIZE_WORDS = {"small": ["small", "little", "tiny"], "large": ["large", "big", "huge"]}
# (phrase after the object, label form used as a heading).
_POS_PHRASES = {
    "top left": (
        ["in the top left corner", "at the upper left", "in the upper left corner"],
        ["top left", "upper left"],
    ),
    "top": (["at the top", "at the top centre", "along the top edge"], ["top", "top centre"]),
    "top right": (
        ["in the top right corner", "at the upper right", "in the upper right corner"],
        ["top right", "upper right"],
    ),
    "left": (["on the left", "at the left side", "on the left side"], ["left", "left side"]),
    "centre": (["in the centre", "in the middle", "at the center"], ["centre", "middle"]),
    "right": (["on the right", "at the right side", "on the right side"], ["right", "right side"]),
    "bottom left": (
        ["in the bottom left corner", "at the lower left", "in the lower left corner"],
        ["bottom left", "lower left"],
    ),
    "bottom": (["at the bottom", "at the bottom centre", "along the bottom edge"], ["bottom", "bottom centre"]),
    "bottom right": (
        ["in the bottom right corner", "at the lower right", "in the lower right corner"],
        ["bottom right", "lower right"],
    ),
}
_REL_PHRASES = {
    "left of": ["to the left of", "left of", "on the left of"],
    "right of": ["to the right of", "right of", "on the right of"],
    "above": ["above", "over", "higher than"],
    "below": ["below", "under", "beneath"],
}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

_ONE_TEMPLATES = (
    "{a} {size} {color} {shape} {pos}",
    "there is {a} {size} {color} {shape} {pos}",
    "{label}: {a} {size} {shape}, coloured {color}",
    "{pos_cap}, {a} {size} {color} {shape}",
    "{a} {color} {shape}, {size}, {pos}",
    "{a} {size} {color} {shape} {pos} on a {bg} background",
    "{size} {color} {shape} located {pos}",
    "a picture of {a} {size} {color} {shape} {pos}",
)
_TWO_TEMPLATES = (
    "{a1} {s1} {c1} {sh1} {rel} {a2} {s2} {c2} {sh2}",
    "there is {a1} {s1} {c1} {sh1} {rel} {a2} {s2} {c2} {sh2}",
    "{a2} {s2} {c2} {sh2} {inv} {a1} {s1} {c1} {sh1}",
    "two shapes: {a1} {s1} {c1} {sh1} {rel} {a2} {s2} {c2} {sh2}",
    "{a1} {s1} {sh1} in {c1} {rel} {a2} {s2} {sh2} in {c2}",
    "{a2} {s2} {c2} {sh2}, and {a1} {s1} {c1} {sh1} {rel} it",
    "a {bg} background with {a1} {s1} {c1} {sh1} {rel} {a2} {s2} {c2} {sh2}",
)


# ---------------------------------------------------------------------------------------------------------------
# Scenes.


@dataclass(frozen=True)
class ShapeObject:
    """One object: shape, colour, size and grid cell."""

    shape: str
    color: str
    size: str
    position: str

    @property
    def row(self) -> int:
        return POSITIONS.index(self.position) // 3

    @property
    def col(self) -> int:
        return POSITIONS.index(self.position) % 3


def relation_of(a: ShapeObject, b: ShapeObject) -> str:
    """The relation named in captions for a w.r.t. b: horizontal when the columns differ, else vertical."""
    if a.col != b.col:
        return "left of" if a.col < b.col else "right of"
    return "above" if a.row < b.row else "below"


@dataclass(frozen=True)
class Scene:
    """A background and one or two objects; a pure value, hashed to pick its split."""

    background: str
    objects: tuple[ShapeObject, ...]

    @property
    def relation(self) -> str | None:
        return relation_of(*self.objects) if len(self.objects) == 2 else None

    def key(self) -> str:
        objs = ";".join(f"{o.shape},{o.color},{o.size},{o.position}" for o in self.objects)
        return f"{self.background}|{objs}"

    def attributes(self) -> dict:
        return {
            "background": self.background,
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "position": o.position} for o in self.objects
            ],
            "relation": self.relation,
        }

    @staticmethod
    def from_attributes(attrs: dict) -> Scene:
        objs = tuple(ShapeObject(o["shape"], o["color"], o["size"], o["position"]) for o in attrs["objects"])
        return Scene(attrs["background"], objs)


def _stable_fraction(text: str) -> float:
    """A hash of `text` mapped to [0, 1): stable across processes and Python versions (unlike hash())."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2.0**64


@dataclass
class ShapesConfig:
    """How Shapes scenes are drawn. The same config, seed and index always give the same image and captions."""

    size: int = 64
    seed: int = 0
    captions_per_image: int = 5
    two_object_prob: float = 0.5
    test_fraction: float = 0.2  # share of discrete scenes reserved for the test split
    # (colour, shape) pairs never shown in training; the "compositional" split holds exactly the scenes using them.
    holdout_pairs: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self):
        if self.size < 8:
            raise ValueError(f"Shapes image size must be >= 8, got {self.size}")
        if not 1 <= self.captions_per_image <= 20:
            raise ValueError(f"captions_per_image must be in 1..20, got {self.captions_per_image}")
        for c, s in self.holdout_pairs:
            if c not in COLORS or s not in SHAPES:
                raise ValueError(f"holdout pair ({c!r}, {s!r}) is not a (colour, shape) of Shapes")
        self.holdout_pairs = [tuple(p) for p in self.holdout_pairs]


def scene_split(scene: Scene, cfg: ShapesConfig) -> str:
    """Which split a discrete scene belongs to: 'compositional' if it uses a held-out pair, else by hash."""
    held = set(cfg.holdout_pairs)
    if any((o.color, o.shape) in held for o in scene.objects):
        return "compositional"
    return "test" if _stable_fraction(scene.key()) < cfg.test_fraction else "train"


def _sample_scene(rng: np.random.Generator, cfg: ShapesConfig) -> Scene:
    bg = str(rng.choice(list(BACKGROUNDS)))
    n = 2 if rng.random() < cfg.two_object_prob else 1
    cells = rng.choice(9, size=n, replace=False)
    colors = [c for c in COLORS if c != bg]
    objs = tuple(
        ShapeObject(
            shape=str(rng.choice(SHAPES)),
            color=str(rng.choice(colors)),
            size=str(rng.choice(SIZES)),
            position=POSITIONS[int(cell)],
        )
        for cell in cells
    )
    return Scene(bg, objs)


_SPLIT_IDS = {"train": 0, "test": 1, "compositional": 2}


def make_scene(cfg: ShapesConfig, split: str, index: int) -> tuple[Scene, np.random.Generator]:
    """The scene at (cfg.seed, split, index), and the generator that continues its stream (jitter, captions)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"unknown Shapes split {split!r}; choose from {sorted(_SPLIT_IDS)}")
    if split == "compositional" and not cfg.holdout_pairs:
        raise ValueError("the compositional split needs holdout_pairs, e.g. [('red', 'circle')]")
    rng = np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])
    for _ in range(10_000):  # rejection sampling: at most a few draws, since test_fraction is small
        scene = _sample_scene(rng, cfg)
        if split == "compositional" and not any((o.color, o.shape) in set(cfg.holdout_pairs) for o in scene.objects):
            # Force a held-out pair onto a random object so the split is not mostly rejections.
            c, s = cfg.holdout_pairs[int(rng.integers(len(cfg.holdout_pairs)))]
            if c == scene.background:
                continue
            i = int(rng.integers(len(scene.objects)))
            objs = list(scene.objects)
            objs[i] = ShapeObject(s, c, objs[i].size, objs[i].position)
            scene = Scene(scene.background, tuple(objs))
        if scene_split(scene, cfg) == split:
            return scene, rng
    raise RuntimeError(f"could not draw a {split} scene (test_fraction={cfg.test_fraction}?)")


# ---------------------------------------------------------------------------------------------------------------
# Captions.


def caption_scene(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """n captions of `scene`, each from a different template (while they last), with random synonyms."""

    def pick(options):
        return options[int(rng.integers(len(options)))]

    bg = pick(_COLOR_WORDS.get(scene.background, [scene.background]))
    templates = _ONE_TEMPLATES if len(scene.objects) == 1 else _TWO_TEMPLATES
    order = rng.permutation(len(templates))
    out: list[str] = []
    for k in range(n):
        t = templates[int(order[k % len(templates)])]
        if len(scene.objects) == 1:
            o = scene.objects[0]
            pos = pick(_POS_PHRASES[o.position][0])
            fields = dict(
                size=pick(_SIZE_WORDS[o.size]),
                color=pick(_COLOR_WORDS[o.color]),
                shape=pick(_SHAPE_WORDS[o.shape]),
                pos=pos,
                pos_cap=pos,
                label=pick(_POS_PHRASES[o.position][1]),
            )
        else:
            o1, o2 = scene.objects
            fields = dict(
                s1=pick(_SIZE_WORDS[o1.size]),
                c1=pick(_COLOR_WORDS[o1.color]),
                sh1=pick(_SHAPE_WORDS[o1.shape]),
                s2=pick(_SIZE_WORDS[o2.size]),
                c2=pick(_COLOR_WORDS[o2.color]),
                sh2=pick(_SHAPE_WORDS[o2.shape]),
                rel=pick(_REL_PHRASES[scene.relation]),
                inv=pick(_REL_PHRASES[_INVERSE[scene.relation]]),
            )
        text = _fix_articles(t.format(a="a", a1="a", a2="a", bg=bg, **fields))
        out.append(text)
    return out


def near_miss(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> Scene:
    """A scene that differs from `scene` in exactly one thing a caption names: one object's shape, colour, size or
    (one object) position, or (two objects) which object is where, so the relation between them reverses.

    Hard negatives for matching-aware discriminators: a random other caption almost always differs in colour
    (7 in 8), so a D that checks colour alone already wins; a near miss makes shape, size, position and relation
    count too. `kind` forces the change (shape, color, size, position, swap) where the scene allows it."""
    objs = list(scene.objects)
    look = lambda o: (o.shape, o.color, o.size)  # noqa: E731
    kinds = ["shape", "color", "size"]
    if len(objs) == 1:
        kinds.append("position")
    elif look(objs[0]) != look(objs[1]):  # swapping two identical objects changes nothing
        kinds.append("swap")
    if kind is not None and kind not in kinds:
        raise ValueError(f"near miss {kind!r} is not possible for this scene; possible: {kinds}")
    kind = kind or kinds[int(rng.integers(len(kinds)))]
    if kind == "swap":
        a, b = objs
        return Scene(scene.background, (replace(a, position=b.position), replace(b, position=a.position)))
    i = int(rng.integers(len(objs)))
    pool = {"shape": SHAPES, "size": SIZES, "position": POSITIONS,
            "color": [c for c in COLORS if c != scene.background]}[kind]  # fmt: skip
    other = [v for v in pool if v != getattr(objs[i], kind)]
    objs[i] = replace(objs[i], **{kind: other[int(rng.integers(len(other)))]})
    return Scene(scene.background, tuple(objs))


def _fix_articles(text: str) -> str:
    """'a orange' -> 'an orange' (templates write every article as 'a')."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


# ---------------------------------------------------------------------------------------------------------------
# Rendering.


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape of radius r centred at (cx, cy); None for shapes drawn as primitives."""
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = math.pi / 2 + k * math.pi / 5
            rr = r if k % 2 == 0 else r * 0.42
            pts.append((cx + rr * math.cos(a), cy - rr * math.sin(a)))
        return pts
    if shape == "heart":
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + r * x / 17, cy - r * (y + 2.5) / 17))
        return pts
    if shape == "cross":
        w = r * 0.38
        return [
            (cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx + w, cy + w),
            (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w),
        ]  # fmt: skip
    return None


def render_scene(scene: Scene, size: int, rng: np.random.Generator | None = None) -> Image.Image:
    """Draw `scene` as an RGB PIL image of size x size (jittered centres when rng is given)."""
    big = size * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        jx, jy = rng.uniform(-_JITTER, _JITTER, size=2) if rng is not None else (0.0, 0.0)
        cx = ((o.col + 0.5) / 3 + jx) * big
        cy = ((o.row + 0.5) / 3 + jy) * big
        r = _SIZE_FRAC[o.size] * big / 2
        fill = COLORS[o.color]
        poly = _shape_polygon(o.shape, cx, cy, r)
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        elif o.shape == "square":
            s = r * 0.85  # a square of the same "radius" looks larger than a circle; shrink to even them out
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        else:
            draw.polygon(poly, fill=fill)
    return img.resize((size, size), Image.LANCZOS)


# ---------------------------------------------------------------------------------------------------------------
# Public API.


@dataclass
class ShapesSample:
    """One Shapes example: the image, its captions and its ground-truth attributes."""

    image: Image.Image
    captions: list[str]
    attributes: dict
    index: int


def make_sample(cfg: ShapesConfig, split: str, index: int) -> ShapesSample:
    """The example at (cfg.seed, split, index); a pure function of its arguments."""
    scene, rng = make_scene(cfg, split, index)
    image = render_scene(scene, cfg.size, rng)
    captions = caption_scene(scene, rng, cfg.captions_per_image)
    return ShapesSample(image, captions, scene.attributes(), index)


def export_shapes(
    out_dir: str | Path, num: int, cfg: ShapesConfig, split: str = "train", progress: bool = True
) -> Path:
    """Write `num` examples as out_dir/*.png plus metadata.jsonl (Hugging Face imagefolder convention)."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta_tmp = out / "metadata.jsonl.tmp"
    with open(meta_tmp, "w") as f:
        for i in tqdm(range(num), desc=f"shapes {split}", disable=not progress, unit="img"):
            s = make_sample(cfg, split, i)
            name = f"{split}_{i:06d}.png"
            s.image.save(out / name)
            f.write(json.dumps({"file_name": name, "text": s.captions, "attributes": s.attributes}) + "\n")
    meta_tmp.replace(out / "metadata.jsonl")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Grounding: where each object is, and which words of a caption name it (token-level supervision of cross-attention,
# TokenCompose-style; see t2i.models.diffusion.grounding_loss).

# The head words a caption uses for a shape (every synonym in _SHAPE_WORDS contains one of them).
_SHAPE_HEADS = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle", "triangular"),
    "star": ("star",),
    "heart": ("heart",),
    "cross": ("cross", "plus"),
}


def object_box(obj: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) in [0, 1] image coordinates that hold the object drawn for `obj` (an attributes entry) at
    any jitter: its cell centre +- half its diameter + the jitter."""
    cell = POSITIONS.index(obj["position"])
    cx, cy = (cell % 3 + 0.5) / 3, (cell // 3 + 0.5) / 3
    h = _SIZE_FRAC[obj["size"]] / 2 + _JITTER
    return (max(0.0, cx - h), max(0.0, cy - h), min(1.0, cx + h), min(1.0, cy + h))


def object_mentions(caption: str, attributes: dict | None) -> list[list[tuple[int, int]]]:
    """Per object of `attributes`, the character spans of `caption` that name its colour or its shape.

    A word that could name either object (both red, or both circles) is left out of both: only unambiguous words are
    grounded. Captions that are not about these attributes (an empty caption for classifier-free guidance, another
    dataset's) simply yield no spans."""
    import re

    objs = (attributes or {}).get("objects") or []
    text = caption.lower()
    per: list[list[tuple[int, int]]] = []
    for o in objs:
        words = list(_COLOR_WORDS.get(o["color"], [o["color"]])) + list(_SHAPE_HEADS.get(o["shape"], (o["shape"],)))
        pat = r"\b(" + "|".join(re.escape(w) for w in words) + r")\b"
        per.append([m.span() for m in re.finditer(pat, text)])
    counts: dict[tuple[int, int], int] = {}
    for spans in per:
        for s in spans:
            counts[s] = counts.get(s, 0) + 1
    return [[s for s in spans if counts[s] == 1] for spans in per]
