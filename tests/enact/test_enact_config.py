import dataclasses

import pytest

from enact import EnactConfig


def test_reference_preset_is_the_released_behaviour_and_the_default():
    ref = EnactConfig.reference()
    assert (ref.sigma, ref.cluster_scope, ref.scale, ref.mask_padding, ref.cluster_size) == (
        3.0, "batch", "reference", False, None)
    assert ref.backend == "sdpa"  # same numbers as "math", fused (see docs/enact.md)
    assert EnactConfig() == ref
    assert EnactConfig.reference(sigma=5.0).sigma == 5.0


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EnactConfig().sigma = 2.0


@pytest.mark.parametrize("field, value, allowed", [
    ("cluster_scope", "batches", "'batch', 'image'"),
    ("scale", "sqrt", "'reference', 'standard'"),
    ("backend", "flash", "'math', 'sdpa'"),
])
def test_bad_choice_names_field_and_choices(field, value, allowed):
    with pytest.raises(ValueError, match=f"EnactConfig.{field} must be one of {allowed}; got '{value}'"):
        EnactConfig(**{field: value})


@pytest.mark.parametrize("kwargs, field", [
    ({"sigma": 0.0}, "sigma"), ({"sigma": -1.0}, "sigma"), ({"sigma": float("nan")}, "sigma"),
    ({"sigma": "3"}, "sigma"), ({"sigma": 0.2}, "sigma"),
    ({"cluster_size": 0}, "cluster_size"), ({"cluster_size": 2.0}, "cluster_size"),
    ({"cluster_size": True}, "cluster_size"), ({"mask_padding": 1}, "mask_padding"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"EnactConfig.{field}"):
        EnactConfig(**kwargs)


def test_replace_validates_and_to_dict_round_trips():
    cfg = EnactConfig().replace(cluster_scope="image", cluster_size=4)
    assert cfg.cluster_scope == "image" and cfg.cluster_size == 4
    assert EnactConfig(**cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="EnactConfig.backend"):
        cfg.replace(backend="cuda")
