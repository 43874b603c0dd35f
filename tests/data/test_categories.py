import pytest
import torch

from enact_bench.data.categories import CategoryMap

# The 80 category ids of COCO 2017 (1..90 with gaps).
COCO_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27,
            28, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53,
            54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80,
            81, 82, 84, 85, 86, 87, 88, 89, 90]


def test_raw_mapping_is_detrs_91_classes():
    cmap = CategoryMap(tuple(COCO_IDS))
    assert len(COCO_IDS) == 80
    assert cmap.num_classes == 91
    assert [cmap.label_of(c) for c in COCO_IDS] == COCO_IDS
    assert cmap.category_of(90) == 90


def test_contiguous_mapping_round_trips():
    cmap = CategoryMap(tuple(reversed(COCO_IDS)), contiguous=True)
    assert cmap.num_classes == 80
    labels = cmap.labels_of(torch.tensor(COCO_IDS))
    assert labels.tolist() == list(range(80))
    assert cmap.categories_of(labels).tolist() == COCO_IDS
    assert cmap.label_of(13) == 11 and cmap.category_of(11) == 13  # id 12 is absent in COCO


def test_bad_ids_and_labels_are_errors():
    cmap = CategoryMap((1, 3, 7), contiguous=True)
    with pytest.raises(KeyError, match="category id 2"):
        cmap.label_of(2)
    with pytest.raises(KeyError, match="0..2"):
        cmap.category_of(3)
    with pytest.raises(ValueError, match="duplicate"):
        CategoryMap((1, 1))
