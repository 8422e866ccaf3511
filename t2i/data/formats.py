"""Readers for captioned image datasets: imagefolder + metadata, the CUB/Oxford-102 layout, COCO captions JSON.

Each reader turns a folder into a list of `CaptionRecord`s (an image path, its captions, optional attributes and
crop box) and a list of problems it met (missing caption files, empty captions). `detect_format` picks the reader
from what the folder holds. Readers never open images: `CaptionDataset` checks them.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")

LAYOUTS = """known layouts:
  - shapes                      the built-in procedural dataset (write 'shapes', or 'shapes:test')
  - imagefolder                 DIR/metadata.jsonl or DIR/metadata.csv with file_name + text|caption (str or list)
  - cub (CUB-200 / Oxford-102)  DIR/{CUB_200_2011/images|images|jpg}, DIR/{text|text_c10}/<class>/<id>.txt,
                                DIR/{train,test}/filenames.pickle
  - coco                        DIR/annotations/captions_<split>2014.json + DIR/[images/]<split>2014/"""


class DatasetFormatError(ValueError):
    """A path that is in no known layout, or holds nothing usable."""


@dataclass
class CaptionRecord:
    """One image on disk with its captions (and ground-truth attributes / crop box when the dataset has them)."""

    image_path: Path
    captions: list[str]
    attributes: dict | None = None
    bbox: tuple[float, float, float, float] | None = None  # x, y, w, h in pixels (CUB's bounding_boxes.txt)


@dataclass
class ReadResult:
    """What a reader found: usable records and the problems it skipped, each naming its path."""

    records: list[CaptionRecord]
    problems: list[str] = field(default_factory=list)
    format: str = ""


# ---------------------------------------------------------------------------------------------------------------
# Restricted unpickling (the StackGAN/AttnGAN filenames.pickle files are lists of strings).


class _StringsOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds only primitive containers: any class or function reference is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: this file may only hold a list of strings (possibly malicious pickle)"
        )


def load_string_list_pickle(path: str | Path) -> list[str]:
    """Load a pickle that must be a list of strings, without ever importing or calling anything."""
    data = Path(path).read_bytes()
    # latin1 reads the Python 2 str pickles that StackGAN/AttnGAN shipped; bytes are decoded below.
    obj = _StringsOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    if not isinstance(obj, (list, tuple)):
        raise pickle.UnpicklingError(f"{path}: expected a list of strings, got {type(obj).__name__}")
    out = []
    for x in obj:
        if isinstance(x, bytes):
            x = x.decode("utf-8")
        if not isinstance(x, str):
            raise pickle.UnpicklingError(f"{path}: expected a list of strings, found a {type(x).__name__}")
        out.append(x)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Detection.


def _imagefolder_root(root: Path, split: str) -> Path | None:
    for d in (root / split, root):
        if (d / "metadata.jsonl").is_file() or (d / "metadata.csv").is_file():
            return d
    return None


def _is_cub(root: Path) -> bool:
    has_text = (root / "text").is_dir() or (root / "text_c10").is_dir()
    has_images = any((root / d).is_dir() for d in ("CUB_200_2011/images", "images", "jpg"))
    return has_text and has_images


def _is_coco(root: Path) -> bool:
    return any((root / "annotations").glob("captions_*.json")) if (root / "annotations").is_dir() else False


def detect_format(path: str | Path, split: str = "train") -> str:
    """The layout of `path`: 'shapes', 'imagefolder', 'cub' or 'coco'; a DatasetFormatError lists the layouts."""
    if str(path).split(":")[0] == "shapes":
        return "shapes"
    root = Path(path)
    if not root.exists():
        raise DatasetFormatError(f"dataset path {root} does not exist\n{LAYOUTS}")
    if not root.is_dir():
        raise DatasetFormatError(f"dataset path {root} is not a folder\n{LAYOUTS}")
    if _imagefolder_root(root, split) is not None:
        return "imagefolder"
    if _is_cub(root):
        return "cub"
    if _is_coco(root):
        return "coco"
    raise DatasetFormatError(f"{root} is in no known layout\n{LAYOUTS}")


# ---------------------------------------------------------------------------------------------------------------
# Readers.


def _as_caption_list(value, where: str, problems: list[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        problems.append(f"{where}: caption is neither a string nor a list of strings")
        return []
    caps = [c.strip() for c in value if isinstance(c, str) and c.strip()]
    if len(caps) < len(value):
        problems.append(f"{where}: {len(value) - len(caps)} empty or non-string caption(s) dropped")
    return caps


def read_imagefolder(root: str | Path, split: str = "train") -> ReadResult:
    """imagefolder + metadata.jsonl/.csv (`file_name` and `text` or `caption`; a string or a list of strings)."""
    base = _imagefolder_root(Path(root), split)
    if base is None:
        raise DatasetFormatError(f"{root}: no metadata.jsonl or metadata.csv\n{LAYOUTS}")
    problems: list[str] = []
    rows: list[tuple[str, dict]] = []
    if (base / "metadata.jsonl").is_file():
        meta = base / "metadata.jsonl"
        for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{meta}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                problems.append(f"{meta}:{n}: not valid JSON ({e.msg})")
    else:
        meta = base / "metadata.csv"
        with open(meta, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                rows.append((f"{meta}:{n}", row))
    records = []
    for where, row in rows:
        if "file_name" not in row:
            problems.append(f"{where}: no file_name")
            continue
        key = "text" if "text" in row else "caption" if "caption" in row else None
        if key is None:
            problems.append(f"{where}: no 'text' or 'caption' column for {row['file_name']}")
            continue
        caps = _as_caption_list(row[key], f"{where} ({row['file_name']})", problems)
        if not caps:
            problems.append(f"{where}: {row['file_name']} has no usable caption; skipped")
            continue
        attrs = row.get("attributes")
        if isinstance(attrs, str):  # CSV stores it as JSON text
            try:
                attrs = json.loads(attrs)
            except json.JSONDecodeError:
                attrs = None
        records.append(CaptionRecord(base / row["file_name"], caps, attrs))
    return ReadResult(records, problems, "imagefolder")


def _find_cub_image(root: Path, name: str) -> Path | None:
    for d in ("CUB_200_2011/images", "images", "jpg"):
        for cand in (root / d / name, root / d / Path(name).name):
            for ext in (".jpg", ".png", ""):
                p = cand.with_name(cand.name + ext) if ext else cand
                if p.is_file():
                    return p
    return None


def _cub_bboxes(root: Path) -> dict[str, tuple[float, float, float, float]]:
    """CUB's images.txt + bounding_boxes.txt -> {'002.Laysan_Albatross/Laysan_..._1027': (x, y, w, h)}."""
    cub = root / "CUB_200_2011"
    if not (cub / "images.txt").is_file() or not (cub / "bounding_boxes.txt").is_file():
        return {}
    names = {}
    for line in (cub / "images.txt").read_text().split("\n"):
        if line.strip():
            idx, rel = line.split()
            names[idx] = rel.rsplit(".", 1)[0]
    boxes = {}
    for line in (cub / "bounding_boxes.txt").read_text().split("\n"):
        if line.strip():
            idx, *xywh = line.split()
            if idx in names:
                boxes[names[idx]] = tuple(float(v) for v in xywh)
    return boxes


def read_cub(root: str | Path, split: str = "train") -> ReadResult:
    """The StackGAN/AttnGAN layout of CUB-200-2011 and Oxford-102 (filenames.pickle + text/<class>/<id>.txt)."""
    root = Path(root)
    problems: list[str] = []
    pkl = root / split / "filenames.pickle"
    text_dir = root / "text" if (root / "text").is_dir() else root / "text_c10"
    if pkl.is_file():
        names = load_string_list_pickle(pkl)
    else:  # no split file: every caption file is an example
        problems.append(f"{pkl} not found: using every caption file under {text_dir}")
        names = sorted(str(p.relative_to(text_dir).with_suffix("")) for p in text_dir.rglob("*.txt"))
    boxes = _cub_bboxes(root)
    records = []
    for name in names:
        txt = text_dir / f"{name}.txt"
        if not txt.is_file():
            problems.append(f"missing caption file {txt}")
            continue
        caps = _as_caption_list(txt.read_text(encoding="utf-8", errors="replace").split("\n"), str(txt), [])
        if not caps:
            problems.append(f"empty caption file {txt}")
            continue
        img = _find_cub_image(root, name)
        if img is None:
            problems.append(f"no image for {name} under {root}")
            continue
        records.append(CaptionRecord(img, caps, None, boxes.get(name)))
    return ReadResult(records, problems, "cub")


def read_coco(root: str | Path, split: str = "train") -> ReadResult:
    """COCO captions: annotations/captions_<split>2014.json (test reads val2014) + the image folder."""
    root = Path(root)
    coco_split = {"train": "train", "test": "val", "val": "val"}.get(split, split)
    candidates = sorted((root / "annotations").glob(f"captions_{coco_split}*.json"))
    if not candidates:
        raise DatasetFormatError(f"{root}/annotations has no captions_{coco_split}*.json\n{LAYOUTS}")
    ann_file = candidates[0]
    data = json.loads(ann_file.read_text(encoding="utf-8"))
    stem = ann_file.stem.replace("captions_", "")  # e.g. train2014
    folders = [root / stem, root / "images" / stem, root / "images", root]
    caps: dict[int, list[str]] = {}
    problems: list[str] = []
    for a in data.get("annotations", []):
        text = str(a.get("caption", "")).strip()
        if not text:
            problems.append(f"{ann_file}: empty caption (annotation id {a.get('id')})")
            continue
        caps.setdefault(a["image_id"], []).append(text)
    records = []
    for im in data.get("images", []):
        if im["id"] not in caps:
            problems.append(f"{ann_file}: image {im['file_name']} has no caption; skipped")
            continue
        path = next((d / im["file_name"] for d in folders if (d / im["file_name"]).is_file()), None)
        if path is None:
            problems.append(f"image file {im['file_name']} not found under {root}")
            continue
        records.append(CaptionRecord(path, caps[im["id"]]))
    return ReadResult(records, problems, "coco")


READERS = {"imagefolder": read_imagefolder, "cub": read_cub, "coco": read_coco}


def read_dataset(path: str | Path, split: str = "train") -> ReadResult:
    """Detect the layout of `path` and read its records."""
    fmt = detect_format(path, split)
    if fmt == "shapes":
        raise DatasetFormatError("shapes is generated, not read: use t2i.data.dataset.load_dataset('shapes')")
    return READERS[fmt](path, split)
