"""The shipped Grafana dashboard, Prometheus files and Dockerfile are valid and match the app.

Every metric an expression names must be one the app exports: the names (and
their label names and values) come from ``/metrics`` of a real app on a
SQLite database holding one subscription with a pending delivery, so the
per-subscription gauges have samples too. The rules get a schema check and a
bracket check, then ``promtool check rules``, ``promtool check config`` and a
``promtool test rules`` run that proves each alert fires on a made-up history
and stays quiet on a healthy one (``make test`` installs ``promtool``). The
Dockerfile is read as text (no docker daemon needed): it installs the built
wheel, and everything it copies is in the build context.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings
from tests.conftest import ADMIN_TOKEN, unavailable
from tests.integration.support import running

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "eventrelay.json"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Gauges read from the shared database: every process exports the same value.
DATABASE_GAUGES = {
    "eventrelay_deliveries",
    "eventrelay_subscription_deliveries",
    "eventrelay_oldest_pending_delivery_age_seconds",
    "eventrelay_delivery_lag_seconds",
    "eventrelay_subscriptions",
    "eventrelay_subscription_circuit_state",
    "eventrelay_subscription_consecutive_failures",
}
# What the dashboard must show (the list).
ON_DASHBOARD = {
    "eventrelay_events_ingested_total",
    "eventrelay_idempotent_replays_total",
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "eventrelay_delivery_attempts_total",
    "eventrelay_delivery_latency_seconds_bucket",
    "eventrelay_delivery_attempt_duration_seconds_bucket",
    "eventrelay_oldest_pending_delivery_age_seconds",
    "eventrelay_delivery_lag_seconds",
    "eventrelay_deliveries",
    "eventrelay_subscription_deliveries",
    "eventrelay_subscription_consecutive_failures",
    "eventrelay_subscription_circuit_state",
    "eventrelay_group_commit_batch_size_bucket",
    "eventrelay_claim_duration_seconds_bucket",
}
REQUIRED_ALERTS = {
    "EventrelayDeadLetterQueueGrowing",
    "EventrelayDeliveryLagHigh",
    "EventrelaySubscriptionDisabled",
    "EventrelayCircuitOpen",
    "EventrelayNoIngest",
    "EventrelayHighErrorRate",
}
PROMETHEUS_SERIES = {"up"}  # made by Prometheus itself, not by the app
TARGET_LABELS = {"job", "instance"}  # added by Prometheus at scrape time
# Labels whose values depend on the data take their domain from a sibling that
# always exports every value.
SAME_VALUES = {
    ("eventrelay_subscription_deliveries", "status"): ("eventrelay_deliveries", "status"),
}
SEVERITIES = {"info", "warning", "critical"}
RULE_KEYS = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "gauge": (),
}


# -- what the app exports ---------------------------------------------------------


@dataclass
class Exported:
    """Series names the app exposes, with the label names and values seen on each."""

    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    values: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    @property
    def names(self) -> set[str]:
        return set(self.labels)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            base = family.name
            self.labels[base]  # noqa: B018 - a family with no samples yet still exists
            for suffix in SUFFIXES.get(family.type, ()):
                self.labels[base + suffix]  # noqa: B018
            for sample in family.samples:
                for name, value in sample.labels.items():
                    self.labels[sample.name].add(name)
                    self.labels[base].add(name)
                    self.values[(sample.name, name)].add(value)


async def _scrape(settings: Settings) -> str:
    # First run: a subscription and an event (no worker, so its delivery stays
    # pending). Second run: the gauges' first refresh at startup sees them.
    async with running(settings) as client:
        created = await client.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/h"})
        assert created.status_code == 201, created.text
        accepted = await client.post(
            "/v1/events", json={"type": "t"}, headers={"Idempotency-Key": "k"}
        )
        assert accepted.status_code == 202, accepted.text
    async with running(settings) as client:
        assert (await client.get("/healthz")).status_code == 200
        for _ in range(250):  # the first refresh runs as the app starts
            text = (await client.get("/metrics")).text
            if "eventrelay_subscription_deliveries{" in text:
                return text
            await asyncio.sleep(0.02)
    pytest.fail("the database gauges never appeared on /metrics")


@pytest.fixture(scope="module")
def exported(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    path = tmp_path_factory.mktemp("deploy-files") / "eventrelay.db"
    shutil.copyfile(sqlite_template, path)
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{path}",
        admin_token=ADMIN_TOKEN,
        allow_private_targets=True,
        log_format="text",
    )
    found = Exported()
    found.add(asyncio.run(_scrape(settings)))
    return found


def test_the_app_exports_what_the_files_are_checked_against(exported: Exported) -> None:
    assert exported.names >= DATABASE_GAUGES
    assert exported.names >= ON_DASHBOARD
    circuit_labels = exported.labels["eventrelay_subscription_circuit_state"]
    assert circuit_labels == {"subscription_id", "tenant_id"}


# -- a small PromQL reader --------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w$:.])([a-zA-Z_:][\w:]*)")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def unbalanced(expr: str) -> str | None:
    """The first bracket that does not close (or closes nothing), else None."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return char
    return stack[-1] if stack else None


def metric_names(expr: str) -> set[str]:
    """The series an expression selects (functions, keywords and labels left out)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("(") or match.group(1) in _KEYWORDS:
            continue
        names.add(match.group(1))
    return names


def selectors(expr: str) -> list[tuple[str, str, str, str]]:
    """(metric, label, operator, value) for every label matcher of a named series."""
    found = []
    for selector in _MATCHERS.finditer(expr):
        for label, op, value in _MATCHER.findall(selector.group(2)):
            found.append((selector.group(1) or "", label, op, value))
    return found


def grouping_labels(expr: str) -> set[str]:
    return {
        label.strip()
        for _, labels in _GROUPING.findall(expr)
        for label in labels.split(",")
        if label.strip()
    }


def expression_problems(expr: str, exported: Exported) -> list[str]:
    """Everything wrong with ``expr`` that can be told without a Prometheus."""
    problems = []
    if (bracket := unbalanced(expr)) is not None:
        problems.append(f"unbalanced {bracket!r}")
    names = metric_names(expr)
    if not names:
        problems.append("selects no series")
    unknown = names - exported.names - PROMETHEUS_SERIES
    if unknown:
        problems.append(f"unknown metrics {sorted(unknown)}")
    known_labels = set().union(*(exported.labels.get(n, set()) for n in names)) | TARGET_LABELS
    for metric, label, op, value in selectors(expr):
        if metric in PROMETHEUS_SERIES:
            continue
        if label not in known_labels:
            problems.append(f"{metric} has no label {label!r}")
        seen = exported.values.get(SAME_VALUES.get((metric, label), (metric, label)))
        if metric.startswith("eventrelay_") and op == "=" and seen and value not in seen:
            problems.append(f'{metric}{{{label}="{value}"}} is never exported (only {seen})')
    if unknown_grouping := grouping_labels(expr) - known_labels - {"le"}:
        problems.append(f"groups by unknown labels {sorted(unknown_grouping)}")
    if names & DATABASE_GAUGES and re.search(r"\b(sum|avg|count)\b", expr):
        problems.append("sums a database gauge: every process exports the same value, use max()")
    return problems


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum(rate(a_total{job=~"$job"}[$__rate_interval]))', {"a_total"}),
        ("max by (x) (b) - max(b offset 15m) > 0", {"b"}),
        ("histogram_quantile(0.99, sum by (le) (rate(c_bucket[5m])))", {"c_bucket"}),
        ('sum(rate(d{s="5xx"}[5m])) / sum(rate(d[5m])) > 0.05 and on() up == 1', {"d", "up"}),
        ("min by (s) (min_over_time(e[30m])) >= 1e3", {"e"}),
    ],
)
def test_the_promql_reader_finds_the_series(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
    assert unbalanced(expr) is None


@pytest.mark.parametrize("expr", ["sum(rate(x[5m])", 'max(x{a="b"}))', "rate(x[5m)]"])
def test_the_bracket_check_finds_unbalanced_expressions(expr: str) -> None:
    assert unbalanced(expr) is not None


# -- Grafana ----------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(_all_panels(panel.get("panels", [])))
    return found


def _expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in _all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "eventrelay"
    assert dashboard["title"]
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_dashboard_panels_have_unique_ids_and_a_place_on_the_grid() -> None:
    panels = _all_panels(_dashboard()["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    occupied: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["title"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in "hwxy"), panel["title"]
        assert min(grid["w"], grid["h"]) >= 1, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = occupied.setdefault((x, y), panel["title"])
                assert other == panel["title"], f"{panel['title']!r} overlaps {other!r}"


def test_every_dashboard_panel_queries_prometheus_through_the_datasource_input() -> None:
    for panel in _all_panels(_dashboard()["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']!r} has no targets"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_dashboard_queries_name_only_exported_metrics(exported: Exported) -> None:
    problems = {
        f"{title}: {expr}": found
        for title, expr in _expressions(_dashboard())
        if (found := expression_problems(expr, exported))
    }
    assert not problems, json.dumps(problems, indent=2)


def test_dashboard_template_queries_name_exported_metrics(exported: Exported) -> None:
    for variable in _dashboard()["templating"]["list"]:
        definition = variable.get("definition", "")
        for metric in re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)", definition):
            assert metric in exported.names, variable["name"]


def test_the_dashboard_shows_every_operator_metric() -> None:
    shown = set().union(*(metric_names(expr) for _, expr in _expressions(_dashboard())))
    assert shown >= ON_DASHBOARD, sorted(ON_DASHBOARD - shown)


# -- Prometheus rules ---------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    assert isinstance(document, dict)
    assert set(document) == {"groups"}, "top level: groups only"
    groups = document["groups"]
    assert isinstance(groups, list)
    assert groups
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)), names
    rules: list[dict[str, Any]] = []
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        assert isinstance(group["rules"], list), group["name"]
        assert group["rules"], group["name"]
        rules.extend(group["rules"])
    return rules


def test_alert_rules_have_the_prometheus_shape() -> None:
    rules = _rules()
    alerts = [rule["alert"] for rule in rules]
    assert len(alerts) == len(set(alerts)), alerts
    assert set(alerts) >= REQUIRED_ALERTS, sorted(REQUIRED_ALERTS - set(alerts))
    for rule in rules:
        name = rule["alert"]
        assert set(rule) <= RULE_KEYS, (name, sorted(set(rule) - RULE_KEYS))
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", name), name
        assert isinstance(rule["expr"], str), name
        assert rule["expr"].strip(), name
        assert DURATION.match(str(rule["for"])), (name, rule["for"])
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert set(annotations) >= {"summary", "description"}, name
        assert all(isinstance(v, str) and v.strip() for v in annotations.values()), name


def test_alert_expressions_name_only_exported_metrics(exported: Exported) -> None:
    problems = {
        rule["alert"]: found
        for rule in _rules()
        if (found := expression_problems(rule["expr"], exported))
    }
    assert not problems, json.dumps(problems, indent=2)


def test_the_example_scrape_config_loads_the_rules_and_scrapes_both_kinds_of_process() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert [(PROMETHEUS_CONFIG.parent / f).resolve() for f in config["rule_files"]] == [ALERTS]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"eventrelay-api", "eventrelay-worker"}
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        targets = [t for c in job["static_configs"] for t in c["targets"]]
        assert targets, job["job_name"]
        assert all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets), targets


# -- promtool (`make test` installs it; under CI=true a missing one fails) -------------


def _promtool(*args: str | Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
    done = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_the_rules_and_the_config() -> None:
    _promtool("check", "rules", ALERTS)
    _promtool("check", "config", PROMETHEUS_CONFIG)


def _both(name: str, values: str) -> list[dict[str, str]]:
    selector = name[:-1] + ", " if name.endswith("}") else name + "{"
    return [
        {"series": f'{selector}job="eventrelay-api", instance="api-1:8000"}}', "values": values},
        {
            "series": f'{selector}job="eventrelay-worker", instance="worker-1:9464"}}',
            "values": values,
        },
    ]


def _fires(alert: str, at: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    expected = [{"exp_labels": {"severity": _severity(alert), **(labels or {})}}]
    return {"eval_time": at, "alertname": alert, "exp_alerts": expected}


def _quiet(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def _severity(alert: str) -> str:
    return str(next(r["labels"]["severity"] for r in _rules() if r["alert"] == alert))


def _unit_tests() -> list[dict[str, Any]]:
    sub = {"subscription_id": "sub_1"}
    return [
        {  # the DLQ grows by one a minute from minute 20 on
            "interval": "1m",
            "input_series": _both('eventrelay_deliveries{status="dead"}', "0x20 1+1x40"),
            "alert_rule_test": [
                _quiet("EventrelayDeadLetterQueueGrowing", "20m"),
                _fires("EventrelayDeadLetterQueueGrowing", "40m"),
            ],
        },
        {  # the DLQ holds 5 and does not grow: no alert however long it stays
            "interval": "1m",
            "input_series": _both('eventrelay_deliveries{status="dead"}', "5x90"),
            "alert_rule_test": [_quiet("EventrelayDeadLetterQueueGrowing", "90m")],
        },
        {  # lag grows by a minute a minute; above 300 s from minute 6, firing from 16
            "interval": "1m",
            "input_series": _both("eventrelay_delivery_lag_seconds", "0+60x30"),
            "alert_rule_test": [
                _quiet("EventrelayDeliveryLagHigh", "10m"),
                _fires("EventrelayDeliveryLagHigh", "20m"),
            ],
        },
        {  # one subscription disabled at minute 30
            "interval": "1m",
            "input_series": _both('eventrelay_subscriptions{status="disabled"}', "0x30 1x120"),
            "alert_rule_test": [
                _quiet("EventrelaySubscriptionDisabled", "29m"),
                _fires("EventrelaySubscriptionDisabled", "40m"),
                _quiet("EventrelaySubscriptionDisabled", "150m"),
            ],
        },
        {  # open from minute 10, with a failed half-open probe every 10 minutes
            "interval": "1m",
            "input_series": _both(
                'eventrelay_subscription_circuit_state{subscription_id="sub_1"}',
                "0x10 2x9 1 2x9 1 2x9 1 2x9 1 2x9",
            ),
            "alert_rule_test": [
                _quiet("EventrelayCircuitOpen", "30m"),
                _fires("EventrelayCircuitOpen", "50m", sub),
            ],
        },
        {  # failing but closing now and then (a success in between): no alert
            "interval": "1m",
            "input_series": _both(
                'eventrelay_subscription_circuit_state{subscription_id="sub_1"}',
                "2x20 0 2x20 0 2x20",
            ),
            "alert_rule_test": [_quiet("EventrelayCircuitOpen", "60m")],
        },
        {  # ingest stops at minute 30 (the counter stays flat)
            "interval": "1m",
            "input_series": [
                *_both("eventrelay_events_ingested_total", "0+100x30 3000x90"),
            ],
            "alert_rule_test": [
                _quiet("EventrelayNoIngest", "60m"),
                _fires("EventrelayNoIngest", "90m"),
            ],
        },
        {  # 10 % of requests are 5xx
            "interval": "1m",
            "input_series": [
                {
                    "series": 'http_requests_total{handler="/v1/events", method="POST", '
                    'status="2xx", job="eventrelay-api", instance="api-1:8000"}',
                    "values": "0+900x30",
                },
                {
                    "series": 'http_requests_total{handler="/v1/events", method="POST", '
                    'status="5xx", job="eventrelay-api", instance="api-1:8000"}',
                    "values": "0+100x30",
                },
            ],
            "alert_rule_test": [
                _quiet("EventrelayHighErrorRate", "5m"),
                _fires("EventrelayHighErrorRate", "20m"),
            ],
        },
        {  # a worker stops answering scrapes at minute 10
            "interval": "1m",
            "input_series": [
                {
                    "series": 'up{job="eventrelay-worker", instance="worker-1:9464"}',
                    "values": "1x10 0x20",
                }
            ],
            "alert_rule_test": [
                _quiet("EventrelayTargetDown", "12m"),
                _fires(
                    "EventrelayTargetDown",
                    "20m",
                    {"job": "eventrelay-worker", "instance": "worker-1:9464"},
                ),
            ],
        },
    ]


def test_promtool_unit_tests_show_each_alert_firing_and_staying_quiet(tmp_path: Path) -> None:
    # promtool compares annotations exactly; the expressions are what is tested
    # here (``promtool check rules`` has parsed the annotation templates).
    rules = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    bare = tmp_path / "alerts.yml"
    bare.write_text(yaml.safe_dump(rules, sort_keys=False))
    tests = tmp_path / "alerts_test.yml"
    document = {"rule_files": [str(bare)], "evaluation_interval": "1m", "tests": _unit_tests()}
    tests.write_text(yaml.safe_dump(document, sort_keys=False))
    tested = {t["alertname"] for case in document["tests"] for t in case["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in _rules()}, "every alert has a unit test"
    _promtool("test", "rules", tests)


# -- the image ----------------------------------------------------------------------


def _copied_from_the_context() -> list[str]:
    """The sources of every ``COPY`` that reads the build context (not another stage)."""
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from=") for w in words):
            sources.extend(words[1:-1])
    return sources


def test_the_image_installs_the_built_wheel_not_the_checkout() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"pip wheel .*--no-deps", text), "the image builds a wheel"
    assert re.search(r"pip install .*--no-deps \S*\.whl", text), "the image installs the wheel"
    assert not re.search(r"pip install .*(\s-e\s|--editable)", text), "no editable install"
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = _copied_from_the_context()
    assert "app" in sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.rstrip("/") not in ignored, f"{source} is in .dockerignore"
