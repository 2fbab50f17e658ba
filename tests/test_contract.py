"""The request contract: every entry point's checks, names and formats come from here, so test them here."""

from __future__ import annotations

import pytest

from slimdiffsr_qgis.contract import (BadInput, RunRequest, human_size, partial_glob, partial_owner, partial_path,
                                      request_id)


def request(**fields):
    return RunRequest.from_dict({"input": "in.tif", "output": "out.tif", **fields})


@pytest.mark.parametrize("fields, message", [
    ({"overwrite": "false"}, "overwrite must be true or false"),
    ({"consistency": 1}, "consistency must be true or false"),
    ({"normalisation": 5}, "normalisation must be text"),
    ({"extent_crs": 4326}, "extent_crs must be text"),
    ({"extent": [0, 0, float("nan"), 1]}, "not a finite number"),
    ({"extent": [10**400, 0, 1, 1]}, "too large"),
    ({"extent": "0,0,1,1"}, "extent must be 4 numbers"),
    ({"tile": 10**400}, "tile must be an integer up to"),
    ({"tile": "1" * 400}, "tile must be an integer"),
    ({"scale": True}, "scale must be an integer"),
    ({"scale": 3}, "scale 3 is not supported"),
    ({"bands": [1, 1]}, "names a band twice"),
    ({"bands": [0]}, "1-based"),
    ({"rgb": [1, 2]}, "exactly 3 bands"),
    ({"bands": [1, 2, 4], "rgb": [1, 2, 3]}, "must be among the written bands"),
    ({"device": "tpu"}, "device 'tpu' is not one of"),
    ({"model": "esrgan"}, "unknown model"),
    ({"colour": "red"}, "unknown request field"),
    ({"input": ""}, "has no 'input' path"),
])
def test_a_bad_field_is_refused_with_a_message_naming_it(fields, message):
    with pytest.raises(BadInput, match=message):
        request(**fields)


def test_back_projection_is_on_unless_a_request_says_otherwise():
    assert request().consistency is True
    assert request(consistency=False).consistency is False


def test_a_good_request_round_trips_through_its_json_form():
    made = request(bands=[4, 3, 2, 8], rgb=[4, 3, 2], extent=[1, 2, 3, 4], consistency=True)
    assert RunRequest.from_dict(made.to_dict()) == made
    assert made.to_dict()["bands"] == [4, 3, 2, 8]


@pytest.mark.parametrize("value", [[1], {"a": 1}, 1.5, True, float("nan"), 2**60])
def test_ids_are_strings_or_integers_only(value):
    with pytest.raises(BadInput, match="request id"):
        request_id(value)
    assert request_id("a") == "a" and request_id(7) == 7 and request_id(None) is None


def test_partial_files_carry_their_writers_pid_and_are_matched_with_their_sidecars(tmp_path):
    target = str(tmp_path / "scene [1]_x4.tif")
    partial = partial_path(target, 4242, "ab12cd34")
    assert partial == str(tmp_path / ".scene [1]_x4.partial-4242-ab12cd34.tif")
    for name in (partial, partial + ".msk", partial + ".aux.xml"):
        assert partial_owner(name, target) == 4242
    assert partial_owner(".other_x4.partial-1-ab.tif", target) is None
    (tmp_path / partial).touch()
    (tmp_path / ".scene [1]_x4.partial-4242-ab12cd34.tif.msk").touch()
    assert len(list(tmp_path.glob(partial_glob(target)))) == 2


def test_sizes_use_binary_units_everywhere():
    assert human_size(10) == "10 B"
    assert human_size(6.0 * 2**20) == "6.0 MiB"
    assert human_size(73.6 * 2**30) == "73.6 GiB"
    assert human_size(3 * 2**40) == "3.0 TiB"
