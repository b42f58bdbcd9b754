"""The work units ``pytest -n N`` hands out: tests sharing a wider fixture stay together."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scheduling import estimate_s, known_durations, shared_groups, unit_of

SOURCE = """
import pytest

@pytest.fixture(scope="module")
def broker_frozen(tmp_path_factory): ...

@pytest.fixture(scope="module")
def worker_on_it(broker_frozen): ...

@pytest.fixture(scope="module")
def other_shared(): ...

@pytest.fixture
def per_test(worker_on_it): ...

@pytest.fixture
def cheap(tmp_path): ...

def test_alone(cheap, tmp_path): ...

def test_through_a_function_fixture(per_test): ...

def test_direct(broker_frozen): ...

def test_other(other_shared): ...

def test_links_both(other_shared, cheap, worker_on_it): ...

@pytest.mark.parametrize("n", [1, 2])
def test_param(n): ...

class TestThings:
    @pytest.fixture(scope="class")
    def shared_by_class(self): ...

    def test_one(self, shared_by_class): ...

    def test_two(self, shared_by_class): ...

    def test_three(self): ...
"""


def test_tests_linked_by_a_shared_fixture_form_one_group() -> None:
    groups = shared_groups(SOURCE)
    # test_links_both links other_shared to the worker_on_it chain: one group for all four
    linked = {"test_through_a_function_fixture", "test_direct", "test_other", "test_links_both"}
    assert {name for name in groups if not name.startswith("TestThings")} == linked
    assert len({groups[name] for name in linked}) == 1
    assert groups["TestThings::test_one"] == groups["TestThings::test_two"]
    assert groups["TestThings::test_one"] != groups["test_direct"]
    assert "test_alone" not in groups and "TestThings::test_three" not in groups


def test_an_autouse_module_fixture_groups_every_test_of_the_file() -> None:
    source = (
        "import pytest\n"
        "@pytest.fixture(scope='module', autouse=True)\ndef stack(): ...\n"
        "def test_a(): ...\ndef test_b(tmp_path): ...\n"
    )
    groups = shared_groups(source)
    assert groups == {"test_a": "stack", "test_b": "stack"}


def test_unit_of_names_the_group_or_the_test_itself(tmp_path: Path) -> None:
    folder = tmp_path / "tests" / "system"
    folder.mkdir(parents=True)
    (folder / "test_x.py").write_text(SOURCE, "utf-8")
    file = "tests/system/test_x.py"
    assert unit_of(f"{file}::test_alone", tmp_path) == f"{file}::test_alone"
    assert unit_of(f"{file}::test_param[1]", tmp_path) == f"{file}::test_param[1]"
    assert unit_of(f"{file}::test_direct", tmp_path) == unit_of(f"{file}::test_other", tmp_path)
    assert unit_of(f"{file}::TestThings::test_two", tmp_path) == f"{file}::<shared_by_class>"


def test_a_file_that_cannot_be_read_is_one_unit(tmp_path: Path) -> None:
    assert unit_of("tests/unit/test_gone.py::test_a", tmp_path) == "tests/unit/test_gone.py"


@pytest.mark.parametrize(
    ("nodeid", "expected_s"),
    [
        ("tests/system/test_x.py::test_known", 42.0),  # the last run's time wins
        ("tests/system/test_x.py::test_new", 20.0),  # a system test starts workers
        ("tests/integration/test_x.py::test_new", 1.0),
        ("tests/unit/test_x.py::test_new", 0.1),
    ],
)
def test_estimates_come_from_the_last_run_else_the_tier(nodeid: str, expected_s: float) -> None:
    assert estimate_s(nodeid, {"tests/system/test_x.py::test_known": 42.0}) == expected_s


def test_the_committed_durations_stand_in_where_the_cache_has_none(tmp_path: Path) -> None:
    committed = tmp_path / "durations.json"
    committed.write_text('{"tests/system/test_a.py::test_a": 90.5, "tests/unit/test_b.py::t": 0.2}')
    durations = known_durations({"tests/unit/test_b.py::t": 0.4}, committed)
    assert durations == {"tests/system/test_a.py::test_a": 90.5, "tests/unit/test_b.py::t": 0.4}
    assert known_durations({"x": 1.0}, tmp_path / "missing.json") == {"x": 1.0}
    committed.write_text("not json")
    assert known_durations({}, committed) == {}
