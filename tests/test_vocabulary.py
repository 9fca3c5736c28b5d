from unlearning.shapes import vocabulary as v


def test_concept_names_are_exactly_the_specified_ones():
    assert v.OBJECTS == ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "ring")
    assert v.STYLES == ("solid", "striped", "dotted", "checkered", "gradient", "speckled")
    assert len(v.COLOUR_NAMES) >= 6


def test_every_concept_has_a_synonym_that_names_nothing_else():
    names = set(v.OBJECTS) | set(v.STYLES) | set(v.COLOUR_NAMES)
    for concept in v.OBJECTS + v.STYLES:
        assert v.SYNONYMS[concept], concept
        for synonym in v.SYNONYMS[concept]:
            assert synonym not in names
            assert v.canonical(synonym) == concept


def test_templates_six_or_more_two_held_out_and_disjoint():
    assert len(v.TRAIN_TEMPLATES) + len(v.HELDOUT_TEMPLATES) >= 6
    assert len(v.HELDOUT_TEMPLATES) >= 2
    assert not set(v.TRAIN_TEMPLATES) & set(v.HELDOUT_TEMPLATES)
    scene = v.Scene("circle", "dotted", "red")
    heldout = {v.caption(scene, t) for t in v.HELDOUT_TEMPLATES}
    assert not heldout & set(v.training_captions(scene))


def test_training_captions_name_the_scene_by_name_or_synonym():
    scene = v.Scene("heart", "striped", "blue")
    captions = v.training_captions(scene)
    assert "a blue striped heart" in captions
    assert "a blue stripy love symbol" in captions
    assert all("blue" in c for c in captions)


def test_domain_of_knows_synonyms_and_refuses_strangers():
    assert v.domain_of("disc") == "object"
    assert v.domain_of("polka-dot") == "style"
    import pytest

    with pytest.raises(ValueError, match="unknown concept"):
        v.domain_of("teapot")
