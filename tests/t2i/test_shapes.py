import json

import numpy as np
import pytest

from t2i.data.dataset import ShapesDataset, load_dataset
from t2i.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    Scene,
    ShapesConfig,
    export_shapes,
    make_sample,
    make_scene,
    relation_of,
    render_scene,
    scene_split,
)


def test_deterministic_from_seed_split_index():
    cfg = ShapesConfig(size=32)
    a, b = make_sample(cfg, "train", 7), make_sample(cfg, "train", 7)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.captions == b.captions and a.attributes == b.attributes
    c = make_sample(ShapesConfig(size=32, seed=1), "train", 7)
    assert c.attributes != a.attributes or c.captions != a.captions


def test_any_resolution():
    for size in (8, 32, 64, 128):
        assert make_sample(ShapesConfig(size=size), "train", 0).image.size == (size, size)
    with pytest.raises(ValueError, match="size"):
        ShapesConfig(size=4)


def test_attribute_invariants():
    cfg = ShapesConfig(size=32)
    n_two = 0
    for i in range(300):
        a = make_sample(cfg, "train", i).attributes
        objs = a["objects"]
        assert 1 <= len(objs) <= 2
        for o in objs:
            assert o["shape"] in SHAPES and o["color"] in COLORS and o["position"] in POSITIONS
            assert o["color"] != a["background"], "an object never has the background's colour"
        if len(objs) == 2:
            n_two += 1
            assert objs[0]["position"] != objs[1]["position"], "two objects stand in distinct cells"
            assert a["relation"] in ("left of", "right of", "above", "below")
        else:
            assert a["relation"] is None
    assert 100 < n_two < 200  # two_object_prob = 0.5


def test_captions_name_the_attributes():
    """Every caption names each object's colour and size word, and the shape (via a synonym)."""
    from t2i.data import shapes as S

    cfg = ShapesConfig(size=32)
    for i in range(200):
        s = make_sample(cfg, "train", i)
        assert len(s.captions) == 5 and len(set(s.captions)) >= 3, s.captions
        for cap in s.captions:
            for o in s.attributes["objects"]:
                assert any(w in cap for w in S._COLOR_WORDS[o["color"]]), (cap, o)
                assert any(w in cap for w in S._SIZE_WORDS[o["size"]]), (cap, o)
                assert any(w in cap for w in S._SHAPE_WORDS[o["shape"]]), (cap, o)
            if len(s.attributes["objects"]) == 1:
                o = s.attributes["objects"][0]
                phrases, labels = S._POS_PHRASES[o["position"]]
                assert any(p in cap for p in phrases + labels), (cap, o)
            else:
                rel = s.attributes["relation"]
                words = S._REL_PHRASES[rel] + S._REL_PHRASES[S._INVERSE[rel]]
                assert any(w in cap for w in words), (cap, rel)
            assert " a orange" not in cap and not cap.startswith("a orange")


def test_relation_matches_grid():
    from t2i.data.shapes import ShapeObject

    a = ShapeObject("circle", "red", "small", "top left")
    b = ShapeObject("star", "blue", "large", "bottom right")
    c = ShapeObject("star", "blue", "large", "bottom left")
    assert relation_of(a, b) == "left of" and relation_of(b, a) == "right of"
    assert relation_of(a, c) == "above" and relation_of(c, a) == "below"


def test_rendered_colour_at_object_centre():
    """The pixel at a large object's cell centre has the object's colour (image and attributes agree)."""
    cfg = ShapesConfig(size=64)
    checked = 0
    for i in range(100):
        scene, _ = make_scene(cfg, "train", i)
        img = np.asarray(render_scene(scene, 64))  # no jitter
        for o in scene.objects:
            if o.size == "large" and o.shape in ("circle", "square", "heart"):
                px = img[int((o.row + 0.5) * 64 / 3), int((o.col + 0.5) * 64 / 3)]
                assert np.abs(px.astype(int) - COLORS[o.color]).max() < 30
                checked += 1
    assert checked > 10


def test_train_test_disjoint_and_compositional_holdout():
    cfg = ShapesConfig(size=16, holdout_pairs=[("red", "circle")])
    train = {Scene.from_attributes(make_sample(cfg, "train", i).attributes).key() for i in range(400)}
    test = {Scene.from_attributes(make_sample(cfg, "test", i).attributes).key() for i in range(400)}
    assert not train & test
    for i in range(200):
        for o in make_sample(cfg, "train", i).attributes["objects"]:
            assert (o["color"], o["shape"]) != ("red", "circle")
    comp = [make_sample(cfg, "compositional", i).attributes for i in range(50)]
    assert all(any((o["color"], o["shape"]) == ("red", "circle") for o in a["objects"]) for a in comp)
    assert all(scene_split(Scene.from_attributes(a), cfg) == "compositional" for a in comp)
    with pytest.raises(ValueError, match="holdout"):
        make_scene(ShapesConfig(), "compositional", 0)
    with pytest.raises(ValueError, match="holdout pair"):
        ShapesConfig(holdout_pairs=[("pink", "circle")])


def test_dataset_on_the_fly_and_export_agree(tmp_path):
    ds = load_dataset("shapes:test", size=32, length=10)
    assert isinstance(ds, ShapesDataset) and len(ds) == 10
    ex = ds[3]
    assert ex.image.shape == (3, 32, 32) and ex.image.min() >= -1 and ex.image.max() <= 1
    export_shapes(tmp_path, 10, ShapesConfig(size=32), "test", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and rows[3]["text"] == ex.captions and rows[3]["attributes"] == ex.attributes
    disk = load_dataset(tmp_path, size=32)
    assert len(disk) == 10
    # PNG is lossless: the exported image reads back as the on-the-fly tensor.
    assert (disk[3].image - ex.image).abs().max() < 1e-6
    assert disk[3].attributes == ex.attributes


def test_near_miss_changes_exactly_one_named_thing():
    import t2i.data.shapes as S
    from t2i.data.shapes import near_miss
    from t2i.train import _describe

    cfg = S.ShapesConfig()
    rng = np.random.default_rng(0)
    kinds = set()
    for i in range(400):
        scene, _ = S.make_scene(cfg, "train", i)
        miss = near_miss(scene, rng)
        assert miss.background == scene.background and len(miss.objects) == len(scene.objects)
        assert all(o.color != miss.background for o in miss.objects)
        diffs = [(k, j) for j, (a, b) in enumerate(zip(scene.objects, miss.objects))
                 for k in ("shape", "color", "size", "position") if getattr(a, k) != getattr(b, k)]  # fmt: skip
        if len(scene.objects) == 2 and {k for k, _ in diffs} == {"position"}:
            # the swap: both objects trade cells, so the caption's relation reverses
            kinds.add("swap")
            a, b = scene.objects
            assert miss.objects[0].position == b.position and miss.objects[1].position == a.position
            assert miss.relation == S._INVERSE[scene.relation]
        else:
            assert len(diffs) == 1, (scene, miss)
            kinds.add(diffs[0][0])
        # What the training loop's mismatch selection compares: the near miss never describes the same scene.
        assert _describe(miss.attributes(), "") != _describe(scene.attributes(), "")
    assert kinds == {"shape", "color", "size", "position", "swap"}
    one = next(sc for sc in (S.make_scene(cfg, "train", i)[0] for i in range(50)) if len(sc.objects) == 1)
    forced = near_miss(one, rng, "shape")
    assert forced.objects[0].shape != one.objects[0].shape and forced.objects[0].color == one.objects[0].color
    with pytest.raises(ValueError, match="'swap' is not possible"):
        near_miss(one, rng, "swap")
