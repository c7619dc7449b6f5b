import numpy as np
import pytest

from unet_core.classes import ClassMap, MaskValueError
from unet_core.config import IGNORE_INDEX

ISBI = {
    "classes": [
        {"name": "membrane", "value": 0, "color": [255, 0, 0]},
        {"name": "cell", "value": 255, "color": [0, 0, 255]},
    ],
    "ignore_values": [],
}


def test_parse_round_trip_and_default_colours():
    cm = ClassMap.from_dict(ISBI)
    assert cm.names == ["membrane", "cell"] and cm.values == [0, 255]
    assert ClassMap.from_json(cm.to_json()) == cm
    no_color = ClassMap.from_dict(
        {"classes": [{"name": "a", "value": 0}, {"name": "b", "value": 1}]}
    )
    assert no_color.colors.shape == (2, 3)
    assert not np.array_equal(no_color.colors[0], no_color.colors[1])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"classes": [{"name": "a", "value": 0}]}, "at least 2 classes"),
        (
            {"classes": [{"name": "a", "value": 0}, {"name": "b", "value": 0}]},
            "more than one class",
        ),
        ({"classes": [{"name": "a", "value": 0}, {"name": "a", "value": 1}]}, "more than once"),
        (
            {
                "classes": [{"name": "a", "value": 0}, {"name": "b", "value": 1}],
                "ignore_values": [1],
            },
            "both a class value and an ignore value",
        ),
        ({"classes": [{"name": "a"}]}, "invalid class map"),
    ],
)
def test_invalid_maps_are_rejected(data, message):
    with pytest.raises(ValueError, match=message):
        ClassMap.from_dict(data, source="x/classes.json")


def test_decode_maps_values_and_ignore():
    cm = ClassMap.from_names(["a", "b", "c"], values=[0, 128, 255], ignore_values=(7,))
    mask = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(cm.decode(mask), [[0, 1], [2, IGNORE_INDEX]])


def test_unknown_values_name_the_file_and_value():
    cm = ClassMap.from_dict(ISBI)
    with pytest.raises(MaskValueError, match=r"masks/x\.png.*\[3, 17\].*ignore_values"):
        cm.decode(np.array([[0, 3], [17, 255]], dtype=np.uint8), source="masks/x.png")


def test_sixteen_bit_values():
    cm = ClassMap.from_names(["bg", "fg"], values=[0, 1000])
    np.testing.assert_array_equal(cm.decode(np.array([[0, 1000]], dtype=np.uint16)), [[0, 1]])


def test_encode_values_inverts_decode():
    cm = ClassMap.from_dict(ISBI)
    idx = np.array([[0, 1], [1, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(cm.encode_values(idx), [[0, 255], [255, 0]])
    assert cm.colorize(idx).shape == (2, 2, 3)
