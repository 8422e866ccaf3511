import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from t2i.data.dataset import DatasetWarning, load_dataset
from t2i.data.formats import DatasetFormatError, detect_format, load_string_list_pickle, read_cub


def _png(path, color=(255, 0, 0), size=(20, 12)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_imagefolder_jsonl_with_corrupt_image_and_empty_caption(tmp_path):
    _png(tmp_path / "a.png")
    _png(tmp_path / "b.png", (0, 0, 255))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    rows = [
        {"file_name": "a.png", "text": ["a red box", "red"]},
        {"file_name": "b.png", "text": "a blue box"},
        {"file_name": "broken.png", "text": "unreadable"},
        {"file_name": "c.png", "text": ""},
    ]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert detect_format(tmp_path) == "imagefolder"
    with pytest.warns(DatasetWarning) as rec:
        ds = load_dataset(tmp_path, size=8)
    msgs = " ".join(str(w.message) for w in rec)
    assert "broken.png" in msgs and "c.png" in msgs
    assert len(ds) == 2 and ds.skipped and "broken.png" in ds.skipped[0]
    ex = ds[0]
    assert ex.image.shape == (3, 8, 8) and ex.captions == ["a red box", "red"]
    assert np.allclose(ex.image[0].numpy(), 1.0) and np.allclose(ex.image[2].numpy(), -1.0)
    assert ds[1].captions == ["a blue box"]


def test_imagefolder_csv_caption_column(tmp_path):
    _png(tmp_path / "train" / "x.jpg")
    (tmp_path / "train" / "metadata.csv").write_text('file_name,caption\nx.jpg,"a red thing, small"\n')
    ds = load_dataset(tmp_path, split="train", size=16)
    assert len(ds) == 1 and ds[0].captions == ["a red thing, small"]


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "bad.png", "text": "x"}))
    with pytest.warns(DatasetWarning), pytest.raises(DatasetFormatError, match="no usable"):
        load_dataset(tmp_path)


def test_unknown_layout_lists_the_layouts(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DatasetFormatError) as e:
        detect_format(tmp_path)
    for layout in ("imagefolder", "cub", "coco", "shapes"):
        assert layout in str(e.value)
    with pytest.raises(DatasetFormatError, match="does not exist"):
        detect_format(tmp_path / "nope")


def _make_cub(root):
    names = ["001.Black_footed_Albatross/Black_Footed_Albatross_0001", "001.Black_footed_Albatross/Missing_0002",
             "002.Laysan_Albatross/Laysan_Albatross_0003"]  # fmt: skip
    for n in (names[0], names[2]):
        _png(root / "CUB_200_2011" / "images" / f"{n}.jpg", size=(100, 60))
    for n in names[:2]:
        (root / "text" / n).parent.mkdir(parents=True, exist_ok=True)
    (root / "text" / f"{names[0]}.txt").write_text("a bird with a black beak\nthis bird is brown\n\n")
    # names[1]: no caption file at all; names[2]: an empty caption file.
    (root / "text" / names[2]).parent.mkdir(parents=True, exist_ok=True)
    (root / "text" / f"{names[2]}.txt").write_text("\n")
    (root / "train").mkdir()
    with open(root / "train" / "filenames.pickle", "wb") as f:
        pickle.dump(names, f, protocol=2)
    (root / "CUB_200_2011" / "images.txt").write_text(f"1 {names[0]}.jpg\n3 {names[2]}.jpg\n")
    (root / "CUB_200_2011" / "bounding_boxes.txt").write_text("1 10.0 5.0 40.0 30.0\n3 0 0 100 60\n")
    return names


def test_cub_layout_bbox_missing_and_empty_captions(tmp_path):
    names = _make_cub(tmp_path)
    assert detect_format(tmp_path) == "cub"
    res = read_cub(tmp_path, "train")
    assert len(res.records) == 1 and res.records[0].captions == ["a bird with a black beak", "this bird is brown"]
    assert res.records[0].bbox == (10.0, 5.0, 40.0, 30.0)
    text = " ".join(res.problems)
    assert "missing caption file" in text and "Missing_0002" in text
    assert "empty caption file" in text and names[2].split("/")[1] in text
    with pytest.warns(DatasetWarning, match="missing caption file"):
        ds = load_dataset(tmp_path, size=16)
    assert ds[0].image.shape == (3, 16, 16)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/mmgan_pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
    good = tmp_path / "good.pickle"
    good.write_bytes(pickle.dumps(["a/b", "c/d"], protocol=2))
    assert load_string_list_pickle(good) == ["a/b", "c/d"]
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps([_Evil()]))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_string_list_pickle(evil)
    assert not os.path.exists("/tmp/mmgan_pwned")
    notlist = tmp_path / "dict.pickle"
    notlist.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(pickle.UnpicklingError, match="list of strings"):
        load_string_list_pickle(notlist)


def test_coco_layout(tmp_path):
    _png(tmp_path / "train2014" / "COCO_train2014_000000000001.jpg", size=(64, 48))
    ann = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg"},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg"},
                   {"id": 3, "file_name": "COCO_train2014_000000000003.jpg"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "A red square. "},
                        {"id": 11, "image_id": 1, "caption": "Something red"},
                        {"id": 12, "image_id": 2, "caption": "missing image"},
                        {"id": 13, "image_id": 3, "caption": "  "}],
    }  # fmt: skip
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2014.json").write_text(json.dumps(ann))
    assert detect_format(tmp_path) == "coco"
    with pytest.warns(DatasetWarning) as rec:
        ds = load_dataset(tmp_path, size=32)
    msgs = " ".join(str(w.message) for w in rec)
    assert "000000000002.jpg not found" in msgs and "empty caption" in msgs
    assert len(ds) == 1 and ds[0].captions == ["A red square.", "Something red"]
    assert ds[0].image.shape == (3, 32, 32)
