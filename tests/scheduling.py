"""How ``pytest -n N`` hands the tests to its processes: work units, longest first.

A work unit is what one process runs in a row. Tests that share a fixture wider than a
function (``scope="module"`` or ``"class"``) defined in their file form one unit, so that
set-up (a worker, a frozen broker, a built wheel) runs once; every other test is a unit of
its own. The units are found by reading each test file's syntax tree in the controlling
process, which sees test ids only.

The units are handed out longest first, after the durations the last run took (kept in
pytest's cache), so the long system tests start at once and the many short ones fill the
gaps at the end. A checkout without that cache takes them from ``tests/durations.json``
when there is one, a copy of the cache from a whole run (``make test-durations`` writes
it), else guesses by tier. A process is given its next
unit when it has one test left to run.

pytest-xdist's own ``--dist loadgroup`` cannot do this here: it carries the group in the
test id, which pytest 9.2 no longer lets a plugin rewrite, so its groups are silently lost.
"""

from __future__ import annotations

import ast
import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "DURATIONS_FILE",
    "DURATIONS_KEY",
    "DurationRecorder",
    "estimate_s",
    "known_durations",
    "shared_groups",
    "unit_of",
]

#: pytest cache key of the seconds each test id took in the last runs (set-up and teardown in)
DURATIONS_KEY = "deskpulse/durations"
#: the same from one whole run, committed, for a checkout without the cache
DURATIONS_FILE = Path(__file__).with_name("durations.json")
#: a guess for a test the cache does not know, by tier: a system test starts workers
DEFAULT_ESTIMATE_S = {"system": 20.0, "integration": 1.0, "unit": 0.1}
SHARED_SCOPES = frozenset({"module", "class", "package", "session"})


def _fixture_scope(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The scope of a ``@pytest.fixture`` function ("function" if not given), else None."""
    for decorator in node.decorator_list:
        call = decorator if isinstance(decorator, ast.Call) else None
        target = call.func if call is not None else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name != "fixture":
            continue
        for keyword in call.keywords if call is not None else ():
            if keyword.arg == "scope" and isinstance(keyword.value, ast.Constant):
                return str(keyword.value.value)
        return "function"
    return None


def _arguments(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    return [arg.arg for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]


def shared_groups(source: str) -> dict[str, str]:
    """Test name (``Class::test`` inside a class) → the name of the group of shared fixtures
    it belongs to, for the tests of ``source`` that use one, directly or through other
    fixtures of the file. Tests linked by any shared fixture are in one group."""
    tree = ast.parse(source)
    fixtures: dict[str, tuple[str, list[str]]] = {}  # name → (scope, arguments)
    tests: dict[str, list[str]] = {}  # test name → arguments
    autouse_shared: list[str] = []

    def visit(body: Iterable[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                visit(node.body, f"{prefix}{node.name}::")
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                scope = _fixture_scope(node)
                arguments = [a for a in _arguments(node) if a not in ("self", "cls")]
                if scope is not None:
                    fixtures[node.name] = (scope, arguments)
                    autouse = "autouse=True" in ast.unparse(node.decorator_list[0])
                    if autouse and scope in SHARED_SCOPES:
                        autouse_shared.append(node.name)
                elif node.name.startswith("test"):
                    tests[prefix + node.name] = arguments

    visit(tree.body, "")

    @functools.cache
    def shared_needed(name: str) -> frozenset[str]:
        scope, arguments = fixtures[name]
        found = {name} if scope in SHARED_SCOPES else set()
        for argument in arguments:
            if argument in fixtures and argument != name:
                found |= shared_needed(argument)
        return frozenset(found)

    parent: dict[str, str] = {}

    def root(name: str) -> str:
        while parent.get(name, name) != name:
            name = parent[name]
        return name

    needs: dict[str, frozenset[str]] = {}
    for test, arguments in tests.items():
        names = [a for a in (*arguments, *autouse_shared) if a in fixtures]
        needs[test] = frozenset().union(*(shared_needed(a) for a in names))
        for first, other in zip(sorted(needs[test]), sorted(needs[test])[1:], strict=False):
            parent[root(other)] = root(first)
    return {test: root(min(found)) for test, found in needs.items() if found}


@functools.cache
def _groups_of(path: Path) -> dict[str, str]:
    try:
        return shared_groups(path.read_text("utf-8"))
    except (OSError, SyntaxError):
        return {"*": "file"}  # unreadable: the whole file in one unit, as a safe default


def unit_of(nodeid: str, rootdir: Path) -> str:
    """The work unit of the test ``nodeid``: its file and shared fixtures, or its own id."""
    file, _, rest = nodeid.partition("::")
    name = rest.split("[", 1)[0]
    groups = _groups_of(rootdir / file)
    if "*" in groups:
        return file
    group = groups.get(name)
    return f"{file}::<{group}>" if group is not None else nodeid


def estimate_s(nodeid: str, durations: Mapping[str, float]) -> float:
    """Seconds ``nodeid`` is expected to take: the last run's, else a guess by its tier."""
    if nodeid in durations:
        return durations[nodeid]
    parts = nodeid.split("/")
    tier = parts[1] if len(parts) > 2 else "unit"
    return DEFAULT_ESTIMATE_S.get(tier, 1.0)


class DurationRecorder:
    """Adds up the seconds each test took (set-up, call, teardown) and keeps them in the
    cache at the end, for the next run's order. Runs where the reports arrive: in the
    controlling process, or in the only one."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.seconds: dict[str, float] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        cache = getattr(self.config, "cache", None)
        if cache is None or not self.seconds:
            return
        known = dict(cache.get(DURATIONS_KEY, {}))
        known.update({nodeid: round(s, 2) for nodeid, s in self.seconds.items()})
        cache.set(DURATIONS_KEY, known)


def known_durations(
    cached: Mapping[str, float], committed: Path = DURATIONS_FILE
) -> dict[str, float]:
    """Seconds per test id: the committed run's, overridden by the cache's (newer)."""
    try:
        durations = {str(k): float(v) for k, v in json.loads(committed.read_text("utf-8")).items()}
    except (OSError, ValueError, AttributeError):
        durations = {}  # missing or unreadable: the tiers' guesses stand in
    durations.update(cached)
    return durations


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """A pytest-xdist scheduler handing out the work units above, longest first."""
    from xdist.scheduler import LoadScopeScheduling

    rootdir = config.rootpath
    cache = getattr(config, "cache", None)
    durations = known_durations(cache.get(DURATIONS_KEY, {}) if cache else {})

    class UnitScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid, rootdir)

        ordered = False

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # the first call: the queue holds every unit, in file order
                self.ordered = True
                units = sorted(
                    self.workqueue.items(),
                    key=lambda unit: -sum(estimate_s(nodeid, durations) for nodeid in unit[1]),
                )
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

        def _reschedule(self, node: Any) -> None:
            # one queued test beyond the running one (the process needs the next test before
            # it runs one); xdist keeps two, which commits long units to busy processes
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return UnitScheduling(config, log)


def write_durations(rootdir: Path, target: Path = DURATIONS_FILE) -> int:
    """Copy the cache's durations of the tests that still exist to ``target``; how many."""
    cached = rootdir / ".pytest_cache" / "v" / DURATIONS_KEY
    durations = json.loads(cached.read_text("utf-8"))
    kept = {
        nodeid: seconds
        for nodeid, seconds in sorted(durations.items())
        if (rootdir / nodeid.split("::", 1)[0]).is_file()
    }
    target.write_text(json.dumps(kept, indent=0) + "\n", "utf-8")
    return len(kept)


if __name__ == "__main__":  # make test-durations
    print(f"{write_durations(Path.cwd())} durations written to {DURATIONS_FILE}")
