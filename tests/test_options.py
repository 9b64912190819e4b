"""The numa_bind values users write: accepted forms, rejected forms, schema parity."""
import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings, strategies as st

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
    (None, BindOptions(enabled=False)),            # unset: no binding
    (1.0, BindOptions(node=(1,))),                 # JSON Schema's "integer" counts 1.0
    ({"node": 1.0, "cpus": [2.0, 0]}, BindOptions(node=(1,), cpus=(0, 2))),
    ({"nic": "auto"}, BindOptions(nic=("UCX_NET_DEVICES", "NVSHMEM_HCA_LIST",
                                       "UCCL_P2P_RDMA_DEV"))),
    ({"nic": "off"}, BindOptions()),
    ({"nic": "off", "node": 1}, BindOptions(node=(1,))),
    ({"nic": "auto", "node": "auto"}, BindOptions(nic=("UCX_NET_DEVICES", "NVSHMEM_HCA_LIST",
                                                       "UCCL_P2P_RDMA_DEV"))),
    ({"nic": {"vars": ["NCCL_IB_HCA", "UCX_NET_DEVICES", "NCCL_IB_HCA"]}},
     BindOptions(nic=("UCX_NET_DEVICES", "NCCL_IB_HCA"))),
]
BAD = ["bogus", -1, True, 1.5, 1024, {"node": [1, 5000]}, [0, 1], {"node": -2}, {"nodes": 1},
       {"memory": "membind"}, {"cpus": "all"}, {"strict": "yes"}, {"node": []},
       {"span": "both"}, {"cpus": [True]}, {"nic": True}, {"nic": {"vars": []}},
       {"nic": {"vars": ["UCX_TLS"]}}, {"nic": {"vars": "UCX_NET_DEVICES"}},
       {"nic": {"vars": ["NCCL_IB_HCA"], "port": 1}}, {"nic": "all"}, {"nic": None},
       # nic follows the GPU; an explicit node binds none, so it would do nothing
       {"nic": "auto", "node": 1}, {"nic": {"vars": ["UCX_NET_DEVICES"]}, "node": [0, 1]}]


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
    opts = parse({"cpus": [1, 3], "memory": "interleave", "nic": "auto"})
    assert BindOptions.from_json(opts.to_json()) == opts


def test_bad_input_never_escapes_as_another_exception_type():
    huge = 10 ** 5000          # repr() of it raises ValueError (int max str digits)
    for value in ({"x": 1, 1: 2}, {"nodes": huge}, {"node": [huge]}, {"memory": ["bind"]},
                  {"cpus": {"a": 1}}, {("t",): 1}, float("nan"), {"node": float("inf")}):
        with pytest.raises(OptionsError, match="numa_bind accepts"):
            parse(value)


# A grammar near the accepted forms, so both the accepted and rejected sides of the
# schema get exercised: keys and values are mostly plausible, sometimes not.
_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 1030), st.sampled_from([0.0, 1.0, 2.5, -1.0]),
    st.sampled_from(["auto", "off", "node", "socket", "exclusive", "core-complex", "bind",
                     "preferred", "interleave", "none", "union", "first", "skip", "x"]),
    st.integers(60000, 70000))
_var_names = st.sampled_from(["UCX_NET_DEVICES", "NVSHMEM_HCA_LIST", "UCCL_P2P_RDMA_DEV",
                              "NCCL_IB_HCA", "UCX_TLS", "vars"])
_nic = st.dictionaries(st.sampled_from(["vars", "port"]),
                       st.one_of(st.lists(_var_names, max_size=3), _var_names), max_size=2)
_values = st.one_of(_scalars, st.lists(_scalars, max_size=3), _nic)
_keys = st.one_of(st.sampled_from(["node", "cpus", "memory", "span", "strict", "migrate",
                                   "nic", "nic"]),
                  st.sampled_from(["nodes", "Node", ""]), st.integers(0, 2))
_numa_bind = st.one_of(_values, st.dictionaries(_keys, _values, max_size=4))


@settings(max_examples=600, deadline=None)
@given(_numa_bind)
def test_parse_accepts_exactly_what_the_schema_accepts(value):
    schema_ok = jsonschema.Draft7Validator(SCHEMA).is_valid(value)
    try:
        parse(value)
        parse_ok = True
    except OptionsError:
        parse_ok = False
    assert parse_ok == schema_ok, value
