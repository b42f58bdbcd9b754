"""The monitoring assets and the compose stack, checked by the real tools where they exist.

``promtool`` and ``amtool`` come from the Debian packages ``prometheus`` and
``prometheus-alertmanager`` (``make system-deps``). Without them these checks skip on a
developer's machine and fail in CI, where a silent skip would hide a broken rule file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deskpulse.exporters.catalog import (
    CATALOG,
    CUMULATIVE,
    DIMENSIONS,
    INGEST_CATALOG,
    INSTANCES_NOW,
    STATE_NOW,
    WINDOWED,
    sample_names,
)
from deskpulse.models.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "exporters" / "assets"
PROMETHEUS = ASSETS / "prometheus"
ALERTMANAGER = ASSETS / "alertmanager"
GRAFANA = ASSETS / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "deskpulse.json"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

RUNBOOK = "https://github.com/deskpulse/deskpulse/blob/main/README.md#runbook-"
SEVERITIES = {"page", "ticket"}
RECORD_NAME = re.compile(r"^[a-z]+(_[a-z]+)*:deskpulse_[a-z0-9_]+:[a-z0-9_]+$")
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
PROMQL_KEYWORDS |= {"on", "ignoring", "group_left", "group_right", "by", "without"}
# Grafana's own variables, with a value that keeps the query valid PromQL.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "6h"}
# Units Grafana knows (packages/grafana-data/src/valueFormats/categories.ts), plus custom ones.
GRAFANA_UNITS = {"none", "short", "percentunit", "percent", "s", "ms", "dtdurations", "cps", "ops"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def need(tool: str) -> str:
    """The path of a system tool; skip without it, except in CI, where it is a failure."""
    path = shutil.which(tool)
    if path is None:
        message = (
            f"{tool} is not installed (Debian packages prometheus, prometheus-alertmanager;"
            " `make system-deps` installs them)"
        )
        if os.environ.get("CI"):
            pytest.fail(message + ": CI must have it")
        pytest.skip(message)
    return path


def run(*args: str, cwd: Path, timeout_s: float = 120) -> str:
    done = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{output}"
    return output


# -- what the rule files hold -----------------------------------------------------------------


def rule_groups(name: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = load_yaml(PROMETHEUS / name)["groups"]
    return groups


def rules(name: str) -> Iterator[dict[str, Any]]:
    for group in rule_groups(name):
        yield from group["rules"]


INFINITY = "yesoreyeram-infinity-datasource"
RECORDS = [rule["record"] for rule in rules("rules.yml")]
ALERTS = list(rules("alerts.yml"))
ALERT_NAMES = sorted({rule["alert"] for rule in ALERTS})


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def all_data_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        if panel["type"] == "row":  # a row only groups panels; it shows no data
            yield from panel.get("panels", [])
        else:
            yield panel


def data_panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The panels fed by Prometheus (the agents table reads the JSON endpoint instead)."""
    for panel in all_data_panels(board):
        if panel["datasource"].get("type") != INFINITY:
            yield panel


def json_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_data_panels(board) if p["datasource"].get("type") == INFINITY]


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in data_panels(dashboard()) for target in panel["targets"]]


def rule_exprs() -> list[str]:
    return [str(rule["expr"]) for name in ("rules.yml", "alerts.yml") for rule in rules(name)]


def without_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (functions, labels, keywords left out)."""
    text = without_strings(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][\w:]*", text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


#: the worker's families and the ingest server's (on its own port)
FAMILIES = (*CATALOG.values(), *INGEST_CATALOG.values())
KNOWN_SERIES = {name for spec in FAMILIES for name in sample_names(spec)}
CUMULATIVE_SERIES = {
    name
    for spec in FAMILIES
    if spec.kind in ("counter", "histogram")
    for name in sample_names(spec)
}


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (priority, le) (rate(a_bucket{x="y"}[$__rate_interval])))'
        ' / on (job) group_left b:c:d - label_replace(vector($t), "p", "q", "", "") and up'
    )
    assert metric_names(expr) == {"a_bucket", "b:c:d", "up"}


# -- promtool and amtool ----------------------------------------------------------------------


def test_rules_and_alerts_pass_promtool_check() -> None:
    output = run(need("promtool"), "check", "rules", "rules.yml", "alerts.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in output


@pytest.mark.timeout(900)
def test_rule_unit_tests_pass() -> None:
    # about 18 s of CPU (groups evaluated every minute over up to 23 h of series): past
    # 120 s of wall time in a CI run whose other test processes loaded the two cores
    run(need("promtool"), "test", "rules", "tests.yml", cwd=PROMETHEUS, timeout_s=600)


def test_prometheus_config_passes_promtool_check() -> None:
    run(need("promtool"), "check", "config", "prometheus.yml", cwd=PROMETHEUS)


def test_alertmanager_config_passes_amtool_check() -> None:
    run(need("amtool"), "check-config", "alertmanager.yml", cwd=ALERTMANAGER)


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    board = dashboard()
    values = dict(GRAFANA_BUILTINS)
    for variable in board["templating"]["list"]:
        values[variable["name"]] = {"window": "1h", "datasource": "prometheus"}.get(
            variable["name"], str(variable["query"]) if variable["type"] == "constant" else ".*"
        )

    def substitute(match: re.Match[str]) -> str:
        assert match.group(1) in values, f"${match.group(1)} is not a dashboard variable"
        return values[match.group(1)]

    checks = [
        {"record": f"dashboard:query:{index}", "expr": re.sub(r"\$\{?(\w+)\}?", substitute, expr)}
        for index, expr in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": checks}]}))
    run(need("promtool"), "check", "rules", str(path), cwd=tmp_path)


# -- rules and alerts -------------------------------------------------------------------------


@pytest.mark.parametrize("record", RECORDS)
def test_recording_rules_are_named_level_metric_operations(record: str) -> None:
    assert RECORD_NAME.match(record), record
    assert RECORDS.count(record) == 1


@pytest.mark.parametrize("rule", ALERTS, ids=lambda rule: f"{rule['alert']}-{rule['expr'][:40]}")
def test_every_alert_has_severity_summary_description_and_runbook(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    assert annotations["runbook_url"] == RUNBOOK + rule["alert"].lower()


def test_alerts_are_built_on_the_cumulative_family() -> None:
    # the windowed gauges are event-time answers; alerting on scrapes of them double-counts
    windowed = {spec.name for spec in WINDOWED}
    for expr in rule_exprs():
        assert not metric_names(expr) & windowed, expr


def test_burn_rate_alerts_pair_a_long_and_a_short_window() -> None:
    pairs = {
        (rule["labels"]["long_window"], rule["labels"]["short_window"]): rule
        for rule in ALERTS
        if rule["alert"] == "FirstResponseErrorBudgetBurn"
    }
    factors = {("1h", "5m"): "14.4", ("6h", "30m"): "6", ("1d", "2h"): "3", ("3d", "6h"): "1"}
    assert set(pairs) == set(factors)
    for (long_window, short_window), rule in pairs.items():
        expr = rule["expr"]
        for window in (long_window, short_window):
            assert f"ratio_rate{window} > ({factors[long_window, short_window]} * 0.05)" in expr
        expected = "page" if long_window in ("1h", "6h") else "ticket"
        assert rule["labels"]["severity"] == expected


def test_unit_tests_cover_every_alert_firing_and_quiet() -> None:
    tests = load_yaml(PROMETHEUS / "tests.yml")
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == set(ALERT_NAMES), "alerts never shown firing"
    assert quiet == set(ALERT_NAMES), "alerts never shown quiet"


def test_unit_tests_cover_every_recording_rule() -> None:
    tests = load_yaml(PROMETHEUS / "tests.yml")
    tested = {
        name
        for case in tests["tests"]
        for check in case.get("promql_expr_test", [])
        for name in metric_names(check["expr"])
    }
    assert set(RECORDS) <= tested, sorted(set(RECORDS) - tested)


def test_unit_tests_fix_the_group_order() -> None:
    # Without it promtool evaluates groups in any order and alert values differ run to run.
    tests = load_yaml(PROMETHEUS / "tests.yml")
    groups = [group["name"] for name in ("rules.yml", "alerts.yml") for group in rule_groups(name)]
    assert tests["group_eval_order"] == groups
    assert tests["rule_files"] == load_yaml(PROMETHEUS / "prometheus.yml")["rule_files"]


def test_every_metric_in_rules_and_dashboard_is_exported() -> None:
    known = KNOWN_SERIES | set(RECORDS) | {"up"}
    for expr in rule_exprs() + dashboard_exprs():
        assert metric_names(expr) <= known, (expr, metric_names(expr) - known)


def test_counters_and_histograms_are_only_read_through_a_range() -> None:
    for expr in rule_exprs() + dashboard_exprs():
        text = without_strings(expr)
        for match in re.finditer(r"(?<![\w:])deskpulse_\w+", text):
            if match.group() not in CUMULATIVE_SERIES:
                continue
            rest = re.sub(r"^\s*\{[^}]*\}", "", text[match.end() :]).lstrip()
            assert rest.startswith("["), f"{match.group()} without rate()/increase() in {expr}"


def test_rules_and_dashboard_use_the_whole_cumulative_family() -> None:
    used = set().union(*(metric_names(expr) for expr in rule_exprs() + dashboard_exprs()))
    for spec in CUMULATIVE:
        assert set(sample_names(spec)) & used, f"{spec.name} is exported but never read"


# -- the dashboard ----------------------------------------------------------------------------


def test_dashboard_identity_and_variables() -> None:
    board = dashboard()
    assert board["uid"] == "deskpulse-kpis"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for dim in ("channel", "queue", "priority"):
        query = variables[dim]["query"]["query"]
        assert query.startswith("label_values(") and query.endswith(f", {dim})")
        assert "deskpulse_tickets_created_total" in query
        assert variables[dim]["includeAll"] and variables[dim]["allValue"] == ".*"
    assert (
        variables["window"]["query"]["query"] == "label_values(deskpulse_tickets_created, window)"
    )
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_every_panel_has_a_unit_and_the_templated_datasource() -> None:
    panels = list(data_panels(dashboard()))
    assert len(panels) >= 20
    for panel in panels:
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in GRAFANA_UNITS or str(unit).startswith("suffix:"), (panel["title"], unit)
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]


def test_every_rate_uses_the_rate_interval() -> None:
    for expr in dashboard_exprs():
        for match in re.finditer(r"\b(i?rate)\(", expr):
            window = re.search(r"\[([^\]]*)\]", expr[match.end() :])
            assert window and window.group(1) == "$__rate_interval", expr


def test_dashboard_covers_the_kpis_and_pipeline_health() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_exprs()))
    for name in (
        "deskpulse_tickets_created_total",
        "deskpulse_first_response_seconds",
        "deskpulse_first_response_within_target_ratio",
        "deskpulse_chat_abandonment_ratio",
        "deskpulse_chat_service_level_ratio",
        "deskpulse_csat_ratio",
        "deskpulse_nps_score",
        "deskpulse_ces_score_average",
        "deskpulse_sla_breaches_total",
        "deskpulse_sla_achieved_ratio",
        "deskpulse_next_response_seconds",
        "deskpulse_first_response_business_seconds",
        "deskpulse_events_processed_total",
        "deskpulse_events_rejected_total",
        "deskpulse_consumer_lag_messages",
        "deskpulse_flush_duration_seconds_bucket",
        "deskpulse_kpi_refresh_timestamp_seconds",
    ):
        assert name in used, name


def row_panels(board: dict[str, Any], title: str) -> list[dict[str, Any]]:
    """The panels under the row called ``title``, up to the next row."""
    (row,) = [
        panel for panel in board["panels"] if panel["type"] == "row" and panel["title"] == title
    ]
    below = sorted(
        (panel for panel in board["panels"] if panel["gridPos"]["y"] > row["gridPos"]["y"]),
        key=lambda panel: panel["gridPos"]["y"],
    )
    in_row = []
    for panel in below:
        if panel["type"] == "row":
            break
        in_row.append(panel)
    return in_row


def test_the_sla_row_shows_every_sla_metric_from_the_catalog() -> None:
    in_row = row_panels(dashboard(), "SLA")
    used = set().union(
        *(metric_names(target["expr"]) for panel in in_row for target in panel["targets"])
    )
    assert used <= KNOWN_SERIES, sorted(used - KNOWN_SERIES)
    assert {
        "deskpulse_sla_achieved_ratio",
        "deskpulse_sla_breaches_total",
        "deskpulse_first_response_seconds",
        "deskpulse_first_response_business_seconds",
        "deskpulse_next_response_seconds",
        "deskpulse_sla_running",
        "deskpulse_sla_at_risk",
    } <= used
    # the instances now are the same from every worker: never summed over them
    for expr in [target["expr"] for panel in in_row for target in panel["targets"]]:
        for name in ("deskpulse_sla_running", "deskpulse_sla_at_risk"):
            assert f"sum({name}" not in expr and f"sum by (metric) ({name}" not in expr, expr
    # breaches per SLA metric, and the quantile panels show p50 and p90
    exprs = [target["expr"] for panel in in_row for target in panel["targets"]]
    assert any("deskpulse_sla_breaches_total" in e and "by (metric)" in e for e in exprs)
    for name in ("deskpulse_first_response_business_seconds", "deskpulse_next_response_seconds"):
        (expr,) = [e for e in exprs if name in e]
        assert 'quantile=~"0.5|0.9"' in expr, expr


def test_the_backlog_row_shows_the_lifecycle_and_live_state_metrics() -> None:
    in_row = row_panels(dashboard(), "Backlog and queue")
    exprs = [target["expr"] for panel in in_row for target in panel["targets"]]
    used = set().union(*(metric_names(expr) for expr in exprs))
    assert used <= KNOWN_SERIES, sorted(used - KNOWN_SERIES)
    assert {spec.name for spec in STATE_NOW} <= used
    assert {
        "deskpulse_resolution_seconds",
        "deskpulse_reopen_ratio",
        "deskpulse_one_touch_ratio",
        "deskpulse_chat_handle_seconds",
        "deskpulse_tickets_created_total",
        "deskpulse_tickets_solved_total",
        "deskpulse_tickets_reopened_total",
    } <= used
    # the backlog is stacked by status, the quantile panels show p50 and p90
    (backlog,) = [panel for panel in in_row if "deskpulse_backlog_tickets" in str(panel)]
    assert backlog["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert "by (status)" in backlog["targets"][0]["expr"]
    for name in ("deskpulse_resolution_seconds", "deskpulse_chat_handle_seconds"):
        (expr,) = [e for e in exprs if f"{name}{{" in e]
        assert 'quantile=~"0.5|0.9"' in expr, expr


def selectors(expr: str) -> Iterator[tuple[str, str]]:
    """(metric name, label matchers) of each catalogued series an expression selects."""
    for match in re.finditer(r"(?<![\w:])(deskpulse_\w+)(\{[^}]*\})?", expr):
        if match.group(1) in KNOWN_SERIES:
            yield match.group(1), match.group(2) or ""


def family(series: str) -> str:
    (spec,) = [spec for spec in FAMILIES if series in sample_names(spec)]
    return spec.name


def test_dashboard_queries_follow_the_window_and_dimension_variables() -> None:
    # a KPI panel that ignored $channel, $queue, $priority or $window would show other
    # numbers than its neighbours under the same selection (pipeline health is the whole
    # worker's, whatever the selection)
    kpis = {spec.name for spec in (*WINDOWED, *CUMULATIVE, *STATE_NOW)}
    checked = 0
    for expr in dashboard_exprs():
        for series, matchers in selectors(expr):
            labels = {**CATALOG, **INGEST_CATALOG}[family(series)].labels
            if family(series) not in kpis:
                continue
            for dim in DIMENSIONS:
                assert f'{dim}=~"${dim}"' in matchers, (series, expr)
            if "window" in labels:
                assert 'window="$window"' in matchers, (series, expr)
            checked += 1
    assert checked >= 40


NOW_GAUGES = {spec.name for spec in (*INSTANCES_NOW, *STATE_NOW)}
MAX = re.compile(r"\bmax(\s+(by|without)\s*\([^)]*\))?\s*$")


def enclosing_call(expr: str, position: int) -> str:
    """The text before the innermost parenthesis that is still open at ``position``."""
    depth = 0
    for index in range(position - 1, -1, -1):
        if expr[index] == ")":
            depth += 1
        elif expr[index] == "(":
            if depth == 0:
                return expr[:index]
            depth -= 1
    return ""


def test_enclosing_call() -> None:
    expr = 'sum by (queue) (max without (instance) (a{x="y"})) / (max by (m) (b) > 0) + c'
    assert MAX.search(enclosing_call(expr, expr.index("a{")))
    assert MAX.search(enclosing_call(expr, expr.index("b)")))
    assert not MAX.search(enclosing_call(expr, expr.index("c")))
    assert not MAX.search(enclosing_call("sum(max(x) + y)", len("sum(max(x) + ")))


def test_state_now_gauges_are_taken_as_a_max_over_workers() -> None:
    # every worker exports the same state: summed over workers it would count it once per
    # worker, so each selector sits right inside a max (groups may be summed after that)
    checked = 0
    for expr in rule_exprs() + dashboard_exprs():
        text = without_strings(expr)
        for match in re.finditer(r"(?<![\w:])deskpulse_\w+", text):
            if match.group() in NOW_GAUGES:
                assert MAX.search(enclosing_call(text, match.start())), expr
                checked += 1
    assert checked >= len(NOW_GAUGES)


def test_every_runbook_link_reaches_a_readme_section() -> None:
    anchors = heading_anchors((ROOT / "README.md").read_text(encoding="utf-8"))
    for rule in ALERTS:
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in anchors, rule["alert"]


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    taken: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_the_agents_table_reads_kpis_by_agent_from_the_json_endpoint() -> None:
    (panel,) = json_panels(dashboard())
    assert panel["type"] == "table" and "$window" in panel["title"]
    # the provisioned JSON datasource, pointed at the worker's web port
    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "deskpulse-json.yml")
    (source,) = sources["datasources"]
    assert panel["datasource"] == {"type": INFINITY, "uid": source["uid"]}
    assert source["type"] == INFINITY and source["url"] == "http://worker:6066"
    assert INFINITY in compose()["services"]["grafana"]["environment"]["GF_INSTALL_PLUGINS"]
    (target,) = panel["targets"]
    assert target["datasource"] == panel["datasource"]
    assert (target["source"], target["type"], target["url"]) == ("url", "json", "/kpis")
    params = {p["key"]: p["value"] for p in target["url_options"]["params"]}
    assert params == {"window": "$window", "by": "agent"}
    assert target["root_selector"] == "groups"
    # every column is a field of an agent's group, as the endpoint builds it
    from deskpulse.streams.agent_kpis import agent_document

    group = agent_document("A7", {}, {"status": None, "occupancy_ratio": None})
    for column in target["columns"]:
        value: Any = group
        for part in column["selector"].split("."):
            assert isinstance(value, dict) and part in value, column["selector"]
            value = value[part]
    selectors = {column["selector"] for column in target["columns"]}
    assert {"key.agent", "presence.status", "tickets_solved", "csat.ratio"} <= selectors
    # durations in seconds, ratios as percentages
    units = {
        name: prop["value"]
        for override in panel["fieldConfig"]["overrides"]
        for prop in override["properties"]
        if prop["id"] == "unit"
        for name in override["matcher"]["options"].strip("^$()").split("|")
    }
    for column in target["columns"]:
        if column["selector"].endswith("_seconds"):
            assert units.get(column["text"]) == "s", column
        if column["selector"].endswith("_ratio") or column["selector"] == "csat.ratio":
            assert units.get(column["text"]) == "percentunit", column


def test_grafana_provisioning() -> None:
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "deskpulse.yml")
    (provider,) = providers["providers"]
    mounts = dict(bind_mounts(compose()["services"]["grafana"]))
    assert mounts[provider["options"]["path"]] == DASHBOARD.parent


# -- Alertmanager -----------------------------------------------------------------------------


def test_alertmanager_routes_every_severity() -> None:
    config = load_yaml(ALERTMANAGER / "alertmanager.yml")
    receivers = {receiver["name"] for receiver in config["receivers"]}
    routed = set()
    for route in config["route"]["routes"]:
        assert route["receiver"] in receivers
        for matcher in route["matchers"]:
            routed |= set(re.findall(r'^severity="(\w+)"$', matcher))
    assert routed == SEVERITIES


# -- docker-compose.yml and the Dockerfile ----------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE)
    return loaded


def bind_mounts(service: dict[str, Any]) -> Iterator[tuple[str, Path]]:
    """(container path, repo path) of each bind mount of a service."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            yield target, (ROOT / source).resolve()


def test_compose_has_the_whole_stack() -> None:
    services = compose()["services"]
    assert {"kafka", "redis", "worker", "prometheus", "alertmanager", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert not any("zookeeper" in name for name in services)
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    # fsynced as the Reliability table's Redis kill -9 row was run, and says so
    assert "--appendfsync always" in command
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.search(r"^\| Redis `kill -9` with AOF `appendfsync always`", readme, re.MULTILINE)


def published_host_port(port: str | int | dict[str, Any]) -> int | None:
    """The host port a compose ``ports`` entry publishes (``None``: a random one)."""
    if isinstance(port, dict):
        published = port.get("published")
        return int(published) if published else None
    spec = str(port).split("/")[0]
    if spec.startswith("["):
        spec = spec[spec.index("]") + 2 :]
    parts = spec.split(":")
    return int(parts[-2]) if len(parts) >= 2 else None


def test_compose_leaves_the_hosts_own_redis_and_kafka_ports_alone() -> None:
    # a developer's machine often runs a Redis on 6379 (or a broker on 9092): the stack
    # must start beside it, and host commands must not reach the wrong one by default
    published = {
        name: [published_host_port(port) for port in service.get("ports", [])]
        for name, service in compose()["services"].items()
    }
    assert all(6379 not in ports and 9092 not in ports for ports in published.values()), published
    assert published["redis"] == [16379]
    header = COMPOSE.read_text(encoding="utf-8").split("\nname:")[0]
    assert "DESKPULSE_REDIS_URL=redis://127.0.0.1:16379/0" in header


def compose_command_lines(service: dict[str, Any]) -> list[list[str]]:
    """The ``deskpulse ...`` invocations in a service's command (a ``sh -c`` script
    included), its shell variables (compose writes ``$`` as ``$$``) replaced by a start
    time and the sums made of it."""
    import shlex

    command = service["command"]
    script = command[-1] if command[:2] == ["sh", "-c"] else shlex.join(command)
    seed = 1_800_000_000  # what $(date +%s) gives, for the arithmetic below
    script = re.sub(r"\$\$\(\(\w+ \+ (\d+)\)\)", lambda m: str(seed + int(m.group(1))), script)
    script = re.sub(r"\$\$\w+", str(seed), script)
    lines = []
    for line in script.replace("&&", "\n").splitlines():
        words = shlex.split(line)
        if words[:1] == ["exec"]:
            words = words[1:]
        if words[:1] == ["deskpulse"]:
            lines.append(words[1:])
    return lines


def test_the_demo_profile_fills_grafana_with_simulated_traffic() -> None:
    from deskpulse.streams.cli import _parser

    services = compose()["services"]
    simulate, worker = services["simulate"], services["worker"]
    assert simulate["profiles"] == ["demo"]
    assert simulate["image"] == worker["image"]
    assert (
        simulate["environment"]["DESKPULSE_KAFKA_BOOTSTRAP"]
        == (worker["environment"]["DESKPULSE_KAFKA_BOOTSTRAP"])
    )
    assert simulate["depends_on"]["worker"]["condition"] == "service_healthy"
    backfill, live = (_parser().parse_args(line) for line in compose_command_lines(simulate))
    # a day of history first (Grafana's 24 h panels are full at once), then live traffic
    assert backfill.command == live.command == "simulate"
    assert backfill.duration == "24h" and not backfill.live and not backfill.out
    assert live.live and live.rate == backfill.rate
    assert live.seed != backfill.seed  # two simulations, ids of their own
    for service in (services["worker"], simulate):
        assert not {p for p in service.get("profiles", [])} - {"demo"}


def test_alertmanager_receivers_post_to_the_sink_in_the_stack() -> None:
    from urllib.parse import urlparse

    config = load_yaml(ALERTMANAGER / "alertmanager.yml")
    services = compose()["services"]
    sink = services["alert-sink"]
    port = int(sink["environment"]["PORT"])
    assert "alert-sink" in services["alertmanager"]["depends_on"]
    for receiver in config["receivers"]:
        (webhook,) = receiver["webhook_configs"]
        url = urlparse(webhook["url"])
        assert (url.hostname, url.port) == ("alert-sink", port), receiver
        assert url.path == "/" + receiver["name"]
    assert "ports" not in sink  # nothing outside the stack posts to it


def published_host_ip(port: str | int | dict[str, Any]) -> str | None:
    """The host address a compose ``ports`` entry binds; ``None`` means every interface.

    Short syntax ``[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`` (IPv6 in brackets) or
    the long syntax's ``host_ip``.
    """
    if isinstance(port, dict):
        host_ip = port.get("host_ip")
        return str(host_ip) if host_ip else None
    spec = str(port).split("/")[0]
    if spec.startswith("["):
        return spec[1 : spec.index("]")]
    parts = spec.split(":")
    return parts[0] if len(parts) == 3 else None


@pytest.mark.parametrize(
    ("entry", "host_ip"),
    [
        ("6379", None),  # container port only: a random host port on every interface
        ("6379:6379", None),
        ("6379:6379/tcp", None),
        ("127.0.0.1:6379:6379", "127.0.0.1"),
        ("0.0.0.0:6379:6379", "0.0.0.0"),
        ("[::1]:6379:6379/udp", "::1"),
        (6379, None),
        ({"target": 6379, "published": 6379}, None),
        ({"target": 6379, "published": 6379, "host_ip": "127.0.0.1"}, "127.0.0.1"),
    ],
)
def test_published_host_ip(entry: str | int | dict[str, Any], host_ip: str | None) -> None:
    assert published_host_ip(entry) == host_ip


def test_compose_publishes_ports_on_loopback_only() -> None:
    # Redis without a password, plaintext Kafka and Grafana's admin/admin must not be
    # reachable from other machines by default (README, Deploying, says how to expose them)
    published = 0
    for name, service in compose()["services"].items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            host_ip = published_host_ip(port)
            assert host_ip in {"127.0.0.1", "::1"}, (name, port)
            published += 1
    assert published >= 6  # kafka, redis, worker, prometheus, alertmanager, grafana


def test_compose_bind_mounts_exist_in_the_repo() -> None:
    mounts = [mount for service in compose()["services"].values() for mount in bind_mounts(service)]
    assert len(mounts) >= 5
    for _, path in mounts:
        assert path.exists(), path
        assert ROOT in path.parents


def test_worker_environment_names_real_settings() -> None:
    worker = compose()["services"]["worker"]
    env = {name: str(value) for name, value in worker["environment"].items()}
    fields = {name: name.removeprefix("DESKPULSE_").lower() for name in env}
    for name, field in fields.items():
        assert name.startswith("DESKPULSE_") and field in Settings.model_fields, name
    settings = load_settings(**{fields[name]: value for name, value in env.items()})
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.redis_url.get_secret_value() == "redis://redis:6379/0"
    assert settings.web_host == "0.0.0.0"
    assert settings.kafka_bootstrap.split(":")[0] in compose()["services"]
    assert worker["command"] == ["deskpulse", "worker"]
    assert worker["build"] == "."
    assert f"http://localhost:{settings.web_port}/readyz" in " ".join(worker["healthcheck"]["test"])


def test_prometheus_scrapes_the_worker_and_reaches_alertmanager() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = compose()["services"]["worker"]["environment"]["DESKPULSE_WEB_PORT"]
    assert jobs["deskpulse"]["static_configs"][0]["targets"] == [f"worker:{port}"]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    mounts = dict(bind_mounts(compose()["services"]["prometheus"]))
    assert mounts["/etc/prometheus"] == PROMETHEUS


def test_dockerfile_installs_the_package_and_runs_the_worker() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    assert 'CMD ["deskpulse", "worker"]' in text
    copied = {
        source.rstrip("/")
        for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE)
        for source in line.split()[:-1]
    }
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # the folders the package-dir mapping installs under deskpulse
    needed = {"pyproject.toml", *project["tool"]["setuptools"]["package-dir"].values()}
    if isinstance(project["project"].get("readme"), str):
        needed.add(project["project"]["readme"])
    # a subpackage's folder (streams/devtools) comes with the folder that holds it
    missing = {path for path in needed if not any(path.startswith(c + "/") for c in copied)}
    assert missing <= copied, missing - copied
    assert project["project"]["scripts"]["deskpulse"] == "deskpulse.streams.cli:main"


# -- the repository stands alone -----------------------------------------------------------

# Spelled in pieces so this file does not match itself.
OUTSIDE_REFERENCES = re.compile(
    "|".join(
        (
            "CON" + "TRACT",  # an external contract document, cited by name
            "\u00a7",  # and by the section numbers of such documents
            "DES" + r"IGN\.md",
            "KPI-REF" + "ERENCE",
            r"\.\./" + "shared",
            "/" + "shared/",
        )
    )
)
# Binary or generated files a reference could not be written in.
NOT_TEXT = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".gz", ".whl", ".lock"}
DOCS = ("docs/kpis.md", "docs/architecture.md")
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def tracked_text_files() -> Iterator[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        path = ROOT / name
        if path.suffix.lower() in NOT_TEXT or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        yield path


def test_no_tracked_file_refers_to_documents_outside_the_repository() -> None:
    # Definitions live in docs/ and the README; a reference to a document that is not in
    # the repository leaves its reader nowhere to look.
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
        for path in tracked_text_files()
        for number, line in enumerate(
            path.read_text(encoding="utf-8", errors="replace").splitlines(), 1
        )
        if OUTSIDE_REFERENCES.search(line)
    ]
    assert len(found) == 0, "\n".join(found)


def test_the_reference_docs_exist_and_the_readme_links_them() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    contents = readme.split("## Contents", 1)[1].split("\n## ", 1)[0]
    for doc in DOCS:
        assert (ROOT / doc).is_file(), doc
        assert f"]({doc})" in contents, f"README's contents do not link {doc}"
    architecture = readme.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    assert "](docs/architecture.md" in architecture
    definitions = readme.split("\n## KPI definitions\n", 1)[1].split("\n## ", 1)[0]
    assert "](docs/kpis.md" in definitions


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of ``markdown`` (lower case, punctuation dropped,
    spaces to hyphens, ``-1``, ``-2`` … for repeats)."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#* *$", without_code(markdown), re.MULTILINE):
        text = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, repeat = text, 0
        while anchor in anchors:
            repeat += 1
            anchor = f"{text}-{repeat}"
        anchors.add(anchor)
    return anchors


def without_code(markdown: str) -> str:
    """``markdown`` without fenced blocks and inline code spans."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", markdown)


@pytest.mark.parametrize("doc", ["README.md", *DOCS])
def test_relative_links_reach_a_file_and_a_heading(doc: str) -> None:
    source = ROOT / doc
    broken = []
    for target in MARKDOWN_LINK.findall(without_code(source.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not this test's business
        path_part, _, anchor = target.partition("#")
        path = (source.parent / path_part).resolve() if path_part else source
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif (
            anchor
            and path.suffix == ".md"
            and anchor not in heading_anchors(path.read_text(encoding="utf-8"))
        ):
            broken.append(f"{target}: no such heading")
    assert not broken, broken
