"""Class maps: parsing, validation, round trips, value -> index decoding."""

import json
import pickle

import numpy as np
import pytest

from unet_core.classes import ClassInfo, ClassMap, MaskValueError, default_palette
from unet_core.config import IGNORE_INDEX

ISBI = {
    "classes": [
        {"name": "membrane", "value": 0, "color": [255, 0, 0]},
        {"name": "cell", "value": 255, "color": [0, 0, 255]},
    ],
    "ignore_values": [],
}


def _two(**extra):
    return {"classes": [{"name": "a", "value": 0}, {"name": "b", "value": 1}], **extra}


def test_parse_and_round_trip():
    cm = ClassMap.from_dict(ISBI)
    assert cm.num_classes == 2
    assert cm.names == ["membrane", "cell"] and cm.values == [0, 255]
    np.testing.assert_array_equal(cm.colors, [[255, 0, 0], [0, 0, 255]])
    assert ClassMap.from_json(cm.to_json()) == cm
    assert ClassMap.from_dict(cm.to_dict()) == cm
    assert pickle.loads(pickle.dumps(cm)) == cm


def test_file_round_trip_and_extra_keys(tmp_path):
    data = {**ISBI, "description": "ISBI 2012", "version": 2}
    data["classes"][0] = {**data["classes"][0], "note": "dark lines"}
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(data))
    cm = ClassMap.from_file(path)
    assert cm.names == ["membrane", "cell"]
    cm.save(tmp_path / "copy.json")
    assert ClassMap.from_file(tmp_path / "copy.json") == cm
    assert ClassMap.from_json(tmp_path / "copy.json") == cm  # a Path is read as a file


def test_missing_colours_get_distinct_defaults():
    cm = ClassMap.from_dict(_two())
    assert cm.colors.shape == (2, 3) and cm.colors.dtype == np.uint8
    assert not np.array_equal(cm.colors[0], cm.colors[1])
    assert ClassMap.from_json(cm.to_json()) == cm  # colours stay unset through a round trip
    big = default_palette(254)
    assert len({tuple(c) for c in big.tolist()}) == 254


def test_binary_and_from_names():
    cm = ClassMap.binary(("membrane", "cell"), (0, 255))
    assert cm.values == [0, 255] and cm.ignore_values == ()
    cm = ClassMap.from_names(["x", "y", "z"], ignore_values=[11])
    assert cm.values == [0, 1, 2] and cm.ignore_values == (11,)
    with pytest.raises(ValueError, match="one of each per class"):
        ClassMap.from_names(["x", "y"], values=[0])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"classes": [{"name": "a", "value": 0}]}, "at least 2 classes"),
        (
            {"classes": [{"name": f"c{i}", "value": i} for i in range(255)]},
            "at most 254 classes",
        ),
        (
            {"classes": [{"name": "a", "value": 0}, {"name": "b", "value": 0}]},
            r"mask values \[0\] are given to more than one class",
        ),
        (
            {"classes": [{"name": "a", "value": 0}, {"name": "a", "value": 1}]},
            r"class names \['a'\] appear more than once",
        ),
        (_two(ignore_values=[1]), r"values \[1\] are both a class value and an ignore value"),
        (
            {"classes": [{"name": "a", "value": 0}, {"name": "b", "value": 70000}]},
            "70000 is not an integer in 0..65535",
        ),
        (
            {"classes": [{"name": "a", "value": -1}, {"name": "b", "value": 1}]},
            "-1 is not an integer in 0..65535",
        ),
        (_two(ignore_values=[65536]), "65536 is not an integer in 0..65535"),
        ({"classes": [{"name": "a"}, {"name": "b", "value": 1}]}, "invalid class map.*'value'"),
        ({"classes": [{"name": "a", "value": 1.5}, {"name": "b"}]}, "must be integers"),
        ({"labels": []}, "invalid class map.*'classes'"),
        (
            {"classes": [{"name": "a", "value": 0, "color": [1, 2]}, {"name": "b", "value": 1}]},
            "color must be",
        ),
    ],
)
def test_invalid_maps_name_the_source_and_the_problem(data, message):
    with pytest.raises(ValueError, match=message) as err:
        ClassMap.from_dict(data, source="x/classes.json")
    assert str(err.value).startswith("x/classes.json: ")


def test_invalid_json_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="c.json: not valid JSON"):
        ClassMap.from_json("{not json", source="c.json")
    with pytest.raises(FileNotFoundError, match="nope.json does not exist.*--class-map"):
        ClassMap.from_file(tmp_path / "nope.json")


def test_decode_maps_values_and_ignore():
    cm = ClassMap.from_names(["a", "b", "c"], values=[0, 128, 255], ignore_values=(7,))
    mask = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    out = cm.decode(mask)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 1], [2, IGNORE_INDEX]])


def test_decode_order_is_the_class_order_not_the_value_order():
    cm = ClassMap((ClassInfo("cell", 255), ClassInfo("membrane", 0)))
    np.testing.assert_array_equal(cm.decode(np.array([[0, 255]], np.uint8)), [[1, 0]])


def test_unknown_values_name_the_file_and_values():
    cm = ClassMap.from_dict(ISBI)
    with pytest.raises(MaskValueError, match=r"masks/x\.png: mask values \[3, 17\]") as err:
        cm.decode(np.array([[0, 3], [17, 255]], dtype=np.uint8), source="masks/x.png")
    assert "add them to 'classes' or 'ignore_values'" in str(err.value)
    assert "2 pixels" in str(err.value)


def test_many_unknown_values_are_shortened():
    cm = ClassMap.binary()
    mask = np.arange(1, 101, dtype=np.uint8).reshape(10, 10)
    with pytest.raises(MaskValueError, match=r"\[1, 2, .*10 \.\.\. and 90 more\]"):
        cm.decode(mask, source="m.png")


def test_sixteen_bit_and_wide_integer_masks():
    cm = ClassMap.from_names(["bg", "fg"], values=[0, 1000], ignore_values=[65535])
    mask16 = np.array([[0, 1000, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(cm.decode(mask16), [[0, 1, IGNORE_INDEX]])
    np.testing.assert_array_equal(cm.decode(mask16.astype(np.int32)), [[0, 1, IGNORE_INDEX]])
    with pytest.raises(MaskValueError, match=r"m.png: mask values \[-4, 70000\] are outside"):
        cm.decode(np.array([[-4, 70000]], dtype=np.int64), source="m.png")
    with pytest.raises(MaskValueError, match=r"mask values \[1001\]"):
        cm.decode(np.array([[1001]], dtype=np.uint16))


def test_float_masks_need_integer_values():
    cm = ClassMap.binary(values=(0, 1))
    np.testing.assert_array_equal(cm.decode(np.array([[0.0, 1.0]], np.float32)), [[0, 1]])
    with pytest.raises(MaskValueError, match="non-integer"):
        cm.decode(np.array([[0.5]], np.float32))


def test_encode_values_inverts_decode_and_colorize():
    cm = ClassMap.from_dict({**ISBI, "ignore_values": [128]})
    idx = np.array([[0, 1], [IGNORE_INDEX, 0]], dtype=np.uint8)
    values = cm.encode_values(idx)
    assert values.dtype == np.uint8
    np.testing.assert_array_equal(values, [[0, 255], [128, 0]])
    np.testing.assert_array_equal(cm.decode(values), idx)
    rgb = cm.colorize(idx)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 1], [0, 0, 255])
    np.testing.assert_array_equal(rgb[1, 0], [0, 0, 0])
    with pytest.raises(ValueError, match=r"class indices \[5\]"):
        cm.encode_values(np.array([[5]], np.uint8))
    wide = ClassMap.from_names(["bg", "fg"], values=[0, 1000])
    assert wide.encode_values(np.array([[1]], np.uint8)).dtype == np.uint16
