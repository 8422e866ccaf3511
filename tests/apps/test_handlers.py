import gradio as gr
import pytest
from PIL import Image

from apps.demo import MAX_CAPTION_CHARS, MAX_IMAGES


def test_generate_every_family_same_seed_same_images(app):
    results, status = app.generate("a small red circle in the top left corner", ["StackGAN", "AttnGAN"], 3, 7)
    assert set(results) == {"StackGAN", "AttnGAN"}
    for name, items in results.items():
        assert len(items) == 3 and all(isinstance(img, Image.Image) for img, _ in items)
        assert items[0][1] == f"{name} #1"
    assert "StackGAN:" in status and "images/s" in status
    again, _ = app.generate("a small red circle in the top left corner", ["AttnGAN"], 3, 7)
    assert [img.tobytes() for img, _ in again["AttnGAN"]] == [img.tobytes() for img, _ in results["AttnGAN"]]


@pytest.mark.parametrize(
    "caption,models,n,match",
    [
        ("", ["StackGAN"], 1, "caption is empty"),
        ("   ", ["StackGAN"], 1, "caption is empty"),
        ("x" * (MAX_CAPTION_CHARS + 1), ["StackGAN"], 1, "limit is 300"),
        ("a red circle", ["StackGAN"], MAX_IMAGES + 1, "between 1 and 16"),
        ("a red circle", ["StackGAN"], 0, "between 1 and 16"),
        ("a red circle", ["StackGAN"], "many", "whole number"),
        ("a red circle", ["Imagen"], 1, "unknown model 'Imagen'"),
        ("a red circle", [], 1, "at least one model"),
    ],
)
def test_generate_bad_input_is_a_clear_error(app, caption, models, n, match):
    with pytest.raises(gr.Error, match=match):
        app.generate(caption, models, n, 0)


def test_custom_folder(app, tiny_zoo_dirs, tmp_path):
    results, _ = app.generate("a red circle", [], 1, 0, custom_path=str(tiny_zoo_dirs["AttnGAN"]))
    assert list(results) == [f"custom:{tiny_zoo_dirs['AttnGAN']}"]
    with pytest.raises(gr.Error, match="no such run or checkpoint"):
        app.generate("a red circle", [], 1, 0, custom_path=str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(gr.Error, match="holds no model"):
        app.generate("a red circle", [], 1, 0, custom_path=str(tmp_path / "empty"))


def test_attention_maps_one_per_word(app):
    out = app.attention("a big blue square", seed=1)
    labels = [label for _, label in out]
    assert labels[0] == "generated image" and labels[1:] == ["a", "big", "blue", "square"]
    assert all(img.size == out[0][0].size for img, _ in out)
    with pytest.raises(gr.Error, match="only AttnGAN"):
        app.attention("a big blue square", model="StackGAN")


def test_interpolate_captions_and_seeds(app):
    import numpy as np

    path = app.interpolate("a red circle", "a blue square", seed=0, steps=4, model="AttnGAN")
    assert len(path) == 4 and path[0][1].startswith("1/4") and path[-1][1].endswith("1.00")
    px = [np.asarray(img).astype(int) for img, _ in path]
    steps = [np.abs(px[0] - p).max() for p in px]
    assert steps[0] == 0 and steps[-1] > 0  # the walk moves away from the first caption's image
    same = app.interpolate("a red circle", "a red circle", seed=0, steps=3, model="StackGAN")
    assert len({img.tobytes() for img, _ in same}) == 1  # equal endpoints: a constant path
    seeds = app.interpolate("a red circle", "", seed=0, steps=3, model="AttnGAN")
    assert len(seeds) == 3
    with pytest.raises(gr.Error, match="between 1 and 12"):
        app.interpolate("a red circle", "", steps=50, model="StackGAN")


def test_textgan_unknown_model(app):
    with pytest.raises(gr.Error, match="unknown text model"):
        app.sentences("SeqGAN (COCO captions)")
