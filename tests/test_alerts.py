"""The alerting rules in deploy/prometheus/: valid, loaded by the compose
Prometheus, each with a runbook, each fired and cleared by promtool's unit
tests (deploy/prometheus/alerts.test.yml) and listed in the README.

tests/test_dashboard.py evaluates them against the real app's series.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus"
ALERTS = RULES / "alerts.yml"
ALERTS_TEST = RULES / "alerts.test.yml"
MOUNTED = "/etc/prometheus/alerts.yml"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="needs promtool (Debian package prometheus): run `make test-deps`",
)


def alerts() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def promtool(*args: str) -> None:
    result = subprocess.run(
        [PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_rules_are_valid():
    promtool("check", "rules", ALERTS.name)


@needs_promtool
def test_every_alert_fires_and_clears_in_promtools_unit_tests():
    promtool("test", "rules", ALERTS_TEST.name)


def test_every_alert_is_tested_firing_and_cleared():
    fired, cleared = set(), set()
    for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            (fired if case["exp_alerts"] else cleared).add(case["alertname"])
    assert fired == set(alerts())
    assert cleared == set(alerts())


def test_the_alerts_cover_what_operators_must_hear_of():
    exprs = {name: rule["expr"] for name, rule in alerts().items()}
    wanted = [
        r"\bup\{",
        r'clips_http_requests_total\{[^}]*status=~"5\.\."',
        r"clips_upstream_requests_total\{[^}]*outcome=~",
        r"histogram_quantile\(0\.99,[^;]*clips_http_request_duration_seconds_bucket",
        r'clips_db_errors_total\{[^}]*kind="unavailable"',
        r'clips_db_errors_total\{[^}]*kind="play_write"',
        r'clips_streams_ended_total\{[^}]*reason=~"timeout\|send_timeout"',
        r"clips_event_loop_tasks",
    ]
    for pattern in wanted:
        assert any(re.search(pattern, expr) for expr in exprs.values()), pattern


def test_every_alert_has_a_runbook_a_summary_and_a_severity():
    for name, rule in alerts().items():
        assert name.startswith("Clips"), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name
        runbook = rule["annotations"]["runbook"]
        assert "\n" not in runbook, f"{name}: the runbook is one line"
        assert len(runbook) > 80, f"{name}: say what to check and what to do"
        assert "for" in rule, f"{name}: a blip should not page"


def test_the_compose_prometheus_loads_the_rules():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert config["rule_files"] == [MOUNTED]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    volumes = compose["services"]["prometheus"]["volumes"]
    assert f"./deploy/prometheus/alerts.yml:{MOUNTED}:ro" in volumes


def test_the_readme_lists_every_alert():
    readme = (ROOT / "README.md").read_text()
    monitoring = readme[readme.index("## Monitoring") : readme.index("## Deploy")]
    missing = [name for name in alerts() if f"`{name}`" not in monitoring]
    assert not missing, f"README Monitoring does not explain {missing}"
