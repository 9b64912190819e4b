"""No value of a RAY_NUMA_* variable stops a worker (issue 21, item 6), in-process.

Each value reaches the worker's code the way it does in a Ray worker: the
bootstrap's ``load_ray_numa`` (``RAY_NUMA_SPEC``, ``RAY_NUMA_NUMACTL_ARGV``), then
the GPU assignment hook (``RAY_NUMA_PLANS``, ``RAY_NUMA_GPU_TABLE``, the kill switch,
the fixture). Hypothesis draws many values, malformed JSON and well-formed JSON of
the wrong shape among them; ``tests/test_ray_env_values.py`` does the same, fewer, in
real Ray workers.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ray_numa import binding, environment, gpu_table, prepared, worker
from ray_numa._boot import ray_numa_boot
from ray_numa.ledger import STATUSES
from ray_numa.options import parse
from tests.procs import run_child

#: Any text an environment variable can hold (no NUL; valid UTF-8).
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
               max_size=40)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
VALUES = TEXT | JSON.map(json.dumps)
SETTINGS = settings(max_examples=150, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("value, level", [
    ("DEBUG", 10), ("debug", 10), (" Warning ", 30), ("WARN", 30), ("10", 10), ("5", 5),
    ("CRITICAL", 50), ("BASIC_FORMAT", None), ("Logger", None), ("INFOO", None),
    ("1e3", None)])
def test_log_levels_are_names_or_numbers(value, level):
    assert environment.log_level(value) == level


#: The level names of ``logging`` (its ``_nameToLevel``), any case, spaces around.
LEVELS = {"CRITICAL": 50, "FATAL": 50, "ERROR": 40, "WARN": 30, "WARNING": 30,
          "INFO": 20, "DEBUG": 10, "NOTSET": 0}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


@given(TEXT)
@example("BASIC_FORMAT")
@example(" debug ")
@example("10")
@example("")
@settings(max_examples=300, deadline=None, database=None)
def test_any_log_level_value_configures_the_logger(value):
    """environment.logger() itself, as a worker first calls it: a level name or a
    number sets that level; anything else sets INFO and warns once; it never raises."""
    log = logging.getLogger("ray_numa")
    saved = (log.level, list(log.handlers), log.propagate,
             getattr(log, "_ray_numa_configured", False), set(environment._warned),
             os.environ.get(environment.LOG_LEVEL_ENV))
    records = _Records()
    try:
        os.environ[environment.LOG_LEVEL_ENV] = value
        if hasattr(log, "_ray_numa_configured"):
            del log._ray_numa_configured
        environment._warned.clear()
        log.handlers = [records]
        for _ in range(2):
            assert environment.logger() is log
        text = value.strip()
        try:
            expected = int(text)
        except ValueError:
            expected = LEVELS.get(text.upper()) if value else logging.INFO
        warnings = [r for r in records.records if r.levelno == logging.WARNING
                    and environment.LOG_LEVEL_ENV in r.getMessage()]
        assert log.level == (logging.INFO if expected is None else expected)
        assert len(warnings) == (expected is None)
    finally:
        log.level, log.handlers, log.propagate = saved[0], saved[1], saved[2]
        log._ray_numa_configured = saved[3]
        environment._warned.clear()
        environment._warned.update(saved[4])
        if saved[5] is None:
            os.environ.pop(environment.LOG_LEVEL_ENV, None)
        else:
            os.environ[environment.LOG_LEVEL_ENV] = saved[5]


@pytest.mark.parametrize("value, shown", [("BASIC_FORMAT", "INFO"), ("10", "DEBUG"),
                                          ("warning", "WARNING")])
def test_the_worker_logger_takes_names_and_numbers_and_warns_once_otherwise(value, shown):
    child = run_child('''
        from ray_numa import environment
        for _ in range(3):
            log = environment.logger()
            log.debug("a debug line")
            log.info("an info line")
            environment.warn_once("a warning")
        ''', env={environment.LOG_LEVEL_ENV: value})
    lines = child.stderr.splitlines()
    complaints = [line for line in lines if environment.LOG_LEVEL_ENV in line]
    assert len(complaints) == (1 if shown == "INFO" and value != "INFO" else 0), lines
    if complaints:
        assert f"{environment.LOG_LEVEL_ENV}='{value}' is not a logging level" in complaints[0]
    assert ("[ray_numa] DEBUG a debug line" in lines) == (shown == "DEBUG")
    assert ("[ray_numa] INFO an info line" in lines) == (shown in ("DEBUG", "INFO"))
    assert lines.count("[ray_numa] WARNING a warning") == 1


@pytest.fixture
def fresh_worker(on_machine, monkeypatch):
    """A fixture machine (bindings recorded, never applied to pytest), and ray_numa's
    worker state put back after each example; Ray's assignment of GPU 0 stands in
    for the runtime context a real worker asks (tests/test_ray_env_values.py has that).

    The worker's code writes ``os.environ`` itself (the bootstrap's error for the
    assignment hook), which monkeypatch does not see: the environment is put back
    whole, after each example and after the test."""
    on_machine("dgx-h100")
    environ = dict(os.environ)
    monkeypatch.setattr(worker, "_assigned_gpu_ids", lambda: ["0"])
    monkeypatch.setattr(worker, "_pooled", lambda: False)
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))   # the torch follow hook
    saved = {name: getattr(worker, name) for name in (
        "_spec", "_auto", "_start_error", "_task_error", "_unsettled")}

    def reset():
        for name, value in saved.items():
            setattr(worker, name, value)
        worker._options.cache_clear()
        binding._binder = None
        environment.release_log()          # install() holds the log until Ray connects
        os.environ.clear()
        os.environ.update(environ)
    yield reset
    reset()


def start_worker(monkeypatch, **env) -> None:
    """What a worker does with its environment: the bootstrap, then an assignment."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    module, message = ray_numa_boot.load_ray_numa()     # never raises
    assert module is worker
    worker.on_assignment()                              # never raises
    assert binding.current_binding().status in STATUSES


@given(spec=VALUES)
@example(spec='{"node": "auto"}')
@example(spec='[]')
@example(spec='{"node": [0], "memory": 1}')
@SETTINGS
def test_any_spec_leaves_the_worker_running(fresh_worker, monkeypatch, spec):
    fresh_worker()
    start_worker(monkeypatch, RAY_NUMA_SPEC=spec)


@given(argv=VALUES | st.lists(TEXT, max_size=4).map(json.dumps))
@example(argv='5')
@example(argv='["--membind=x"]')
@SETTINGS
def test_any_numactl_argv_leaves_the_worker_running(fresh_worker, monkeypatch, argv):
    fresh_worker()
    start_worker(monkeypatch, RAY_NUMA_SPEC=json.dumps({"node": [0]}),
                 RAY_NUMA_NUMACTL_ARGV=argv)
    assert worker._start_error is None


def _near_valid_plans(nodes, plans) -> str:
    options = parse("auto")
    limits = prepared.process_limits()
    return json.dumps({"key": prepared._key(options.to_json(), limits), "nodes": nodes,
                       "plans": plans})


@given(plans=VALUES | st.builds(_near_valid_plans, JSON,
                                st.dictionaries(st.sampled_from(["0", "1"]), JSON)),
       table=VALUES | st.builds(lambda gpus, source: json.dumps(
           {"version": gpu_table.VERSION, "gpus": gpus, "source": source,
            "fixture": environment.fixture_name()}), JSON, JSON),
       disable=TEXT, fixture=TEXT)
@example(plans="{", table="{", disable="yes", fixture="/nowhere")
@SETTINGS
def test_what_the_agent_hands_a_worker_never_stops_it(fresh_worker, monkeypatch, plans,
                                                      table, disable, fixture):
    fresh_worker()
    real_fixture = environment.fixture_name()
    env = dict(RAY_NUMA_SPEC=parse("auto").to_json(), RAY_NUMA_PLANS=plans,
               RAY_NUMA_GPU_TABLE=table, RAY_NUMA_DISABLE=disable)
    if fixture.strip() and not Path(fixture.strip()).exists():
        env["RAY_NUMA_FIXTURE"] = fixture       # pointing nowhere: this machine's view
    start_worker(monkeypatch, **env)
    # the worker looked (bound, or said why not); the bootstrap had nothing to report
    assert binding.current_binding().status in ("bound", "skipped", "off")
    monkeypatch.setenv(environment.FIXTURE_ENV, real_fixture)


GOOD_GPU = {"index": 0, "bus_id": "0000:18:00.0", "uuid": "GPU-x", "name": "H100",
            "compute_capability": [9, 0], "nvml_numa_node": 0, "mig_uuids": []}


@pytest.mark.parametrize("field, value", [
    ("index", "0"), ("index", True), ("index", 0.0), ("bus_id", 18), ("uuid", None),
    ("name", ["H100"]), ("compute_capability", [9]), ("compute_capability", "9.0"),
    ("compute_capability", ["9", "0"]), ("nvml_numa_node", "0"), ("mig_uuids", "MIG-x"),
    ("mig_uuids", [1])])
def test_a_gpu_table_with_a_wrong_field_type_is_not_used(fresh_worker, field, value):
    """The worker asks NVML itself rather than binding from a table it misreads (a
    hand-edited or other-version RAY_NUMA_GPU_TABLE)."""
    good = json.dumps({"version": gpu_table.VERSION, "source": "nvml",
                       "fixture": environment.fixture_name(), "gpus": [GOOD_GPU]})
    assert gpu_table.decode(good) is not None
    bad = json.loads(good)
    bad["gpus"][0][field] = value
    assert gpu_table.decode(json.dumps(bad)) is None


@pytest.mark.parametrize("entry", [
    {"plan": {"cpus": 5, "cpu_nodes": [0], "mem_nodes": [0], "memory": "bind",
              "reason": "r", "notes": [], "home": 0}},
    {"plan": {"cpus": "0-3", "cpu_nodes": "0", "mem_nodes": [0], "memory": "bind",
              "reason": "r", "notes": [], "home": 0}},
    {"plan": {"cpus": "0-3", "cpu_nodes": [0], "mem_nodes": [0], "memory": 1,
              "reason": "r", "notes": [], "home": 0}},
    {"plan": {"cpus": "0-3", "cpu_nodes": [0], "mem_nodes": [0], "memory": "bind",
              "reason": "r", "notes": "n", "home": "0"}},
    {"plan": {"cpus": "x", "cpu_nodes": [0], "mem_nodes": [0], "memory": "bind",
              "reason": "r", "notes": [], "home": 0}},
    {"skip": {"reason": 5, "fix": "", "quiet": False}},
    {"skip": {"reason": "r", "fix": "", "quiet": "no"}}])
def test_an_agent_plan_with_a_wrong_field_type_is_planned_again(fresh_worker, monkeypatch,
                                                                 entry):
    """The worker plans itself and binds as it would have without the agent's plans."""
    fresh_worker()
    start_worker(monkeypatch, RAY_NUMA_SPEC=parse("auto").to_json())
    expected = binding.current_binding().as_dict()
    assert expected["status"] == "bound", expected
    fresh_worker()
    start_worker(monkeypatch, RAY_NUMA_SPEC=parse("auto").to_json(),
                 RAY_NUMA_PLANS=_near_valid_plans([0, 1], {"0": entry}))
    assert binding.current_binding().as_dict() == expected
