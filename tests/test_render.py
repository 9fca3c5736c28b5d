import numpy as np
import pytest

from unlearning.shapes.render import IMAGE_SIZE, random_scenes, render, render_batch, scene_rng
from unlearning.shapes.vocabulary import OBJECTS, STYLES, Scene, all_scenes


def test_same_seed_same_pixels_and_different_seed_different_pixels():
    scenes = random_scenes(16, seed=3)
    assert random_scenes(16, seed=3) == scenes
    first, again = render_batch(scenes, seed=11), render_batch(scenes, seed=11)
    assert first.dtype == np.uint8 and first.shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, render_batch(scenes, seed=12))


def test_an_image_does_not_depend_on_the_batch_it_is_rendered_in():
    scenes = random_scenes(8, seed=5)
    whole = render_batch(scenes, seed=7)
    assert np.array_equal(whole[3], render(scenes[3], scene_rng(7, 3)))


def test_every_combination_renders_a_visible_shape():
    for i, scene in enumerate(all_scenes()[::5]):
        image = render(scene, scene_rng(0, i)).astype(float)
        corners = np.concatenate([image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]]).reshape(4, 3)
        background = np.median(corners, axis=0)
        foreground = np.abs(image - background).sum(axis=2) > 40
        assert 40 < foreground.sum() < IMAGE_SIZE * IMAGE_SIZE * 0.8, scene


def test_styles_differ_for_the_same_layout():
    """Same seed = same position/size/colour draws, so only the texture should change."""
    images = {s: render(Scene("square", s, "blue"), scene_rng(1, 0)).astype(float) for s in STYLES}
    for a in STYLES:
        for b in STYLES:
            if a < b:
                assert np.abs(images[a] - images[b]).mean() > 1.0, (a, b)


def test_unknown_object_is_refused():
    with pytest.raises(ValueError, match="unknown object"):
        render(Scene("teapot", "solid", "red"), scene_rng(0, 0))
    assert len(OBJECTS) == 8
