"""The numa_bind values users write: accepted forms, rejected forms, schema parity."""
import json
from pathlib import Path

import jsonschema
import pytest

from ray_numa.options import BindOptions, OptionsError, parse

SCHEMA = json.loads((Path(__file__).parents[1] / "ray_numa/schemas/numa_bind.json").read_text())

GOOD = [
    ("auto", BindOptions()),
    ("off", BindOptions(enabled=False)),
    (1, BindOptions(node=(1,))),
    ({"node": [3, 1]}, BindOptions(node=(1, 3))),
    ({"node": 0, "memory": "preferred", "strict": True},
     BindOptions(node=(0,), memory="preferred", strict=True)),
    ({"cpus": "exclusive", "span": "first"}, BindOptions(cpus="exclusive", span="first")),
    ({"cpus": [4, 2, 2]}, BindOptions(cpus=(2, 4))),
    ({"memory": "none", "migrate": False}, BindOptions(memory="none", migrate=False)),
    ({}, BindOptions()),
]
BAD = ["bogus", -1, True, 1.5, None, [0, 1], {"node": -2}, {"nodes": 1},
       {"memory": "membind"}, {"cpus": "all"}, {"strict": "yes"}, {"node": []},
       {"span": "both"}, {"cpus": [True]}]


@pytest.mark.parametrize("value,expected", GOOD)
def test_accepted_forms_parse_and_match_schema(value, expected):
    assert parse(value) == expected
    jsonschema.validate(value, SCHEMA)


@pytest.mark.parametrize("value", BAD)
def test_rejected_forms_name_the_valid_forms_and_fail_the_schema(value):
    with pytest.raises(OptionsError) as err:
        parse(value)
    assert repr(value) in str(err.value)
    assert '"auto"' in str(err.value) and "strict (bool" in str(err.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, SCHEMA)


def test_options_survive_the_trip_to_the_worker():
    opts = parse({"node": [0, 2], "cpus": [1, 3], "memory": "interleave"})
    assert BindOptions.from_json(opts.to_json()) == opts
