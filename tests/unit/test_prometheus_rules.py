"""cluster/prometheus/ through Prometheus's own checker: the alert rules load, their unit tests
(alerts_test.yml) pass and cover every alert both ways, a broken rule fails them, and the
example scrape config loads with a target file in the format `modresnet serve` writes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers.kuberay import docs_of
from helpers.prometheus import find_promtool

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "cluster" / "prometheus"
ALERTS = {
    "ModresnetHigh5xxRate",
    "ModresnetHighP99Latency",
    "ModresnetSustained429s",
    "ModresnetNoReadyReplica",
    "ModresnetReplicasAtMaximum",
}
# the metrics contract: Ray's agent exports ray_<name>, the scrape configs we ship strip that
RELABEL = {
    "source_labels": ["__name__"],
    "regex": "ray_(modresnet_.*)",
    "target_label": "__name__",
    "replacement": "$1",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    return find_promtool()


def run(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def rules() -> list[dict]:
    text = (PROMETHEUS / "alerts.yml").read_text()
    return [r for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


def unit_tests() -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]


def test_the_skip_helper_names_the_make_target_and_fails_where_prometheus_is_required(
    monkeypatch,
):
    missing = ("/nonexistent/promtool",)
    monkeypatch.delenv("MODRESNET_REQUIRE_PROMETHEUS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="`make prometheus`"):
        find_promtool(missing)
    monkeypatch.setenv("MODRESNET_REQUIRE_PROMETHEUS", "1")
    with pytest.raises(pytest.fail.Exception, match="`make prometheus`"):
        find_promtool(missing)


def test_the_alert_rules_pass_promtool(promtool):
    result = run(promtool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert {r["alert"] for r in rules() if "alert" in r} == ALERTS
    for rule in rules():
        if "alert" in rule:
            assert rule["for"] and rule["labels"]["severity"] in {"critical", "warning"}, rule
            assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_the_unit_tests_pass_and_fire_and_hold_back_every_alert(promtool):
    result = run(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    cases = [c for t in unit_tests() for c in t.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    held_back = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert fired == ALERTS, f"no test where these fire: {ALERTS - fired}"
    assert held_back == ALERTS, f"no test where these stay quiet: {ALERTS - held_back}"
    records = {r["record"] for r in rules() if "record" in r}
    tested = {c["expr"] for t in unit_tests() for c in t.get("promql_expr_test", [])}
    assert records <= tested, f"recording rules without a promql_expr_test: {records - tested}"


def typo_in(expr: str) -> str:
    """Every series name in the expression misspelt, as a renamed metric would leave it."""
    return re.sub(
        r"\b((?:modresnet|ray_serve)_[a-z_]+|[a-z_]+:modresnet_[a-z0-9_]+:[a-z0-9_]+)", r"\1x", expr
    )


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_a_rule_with_a_misspelt_metric_fails_its_unit_test(promtool, tmp_path, alert):
    doc = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                broken = typo_in(rule["expr"])
                assert broken != rule["expr"]
                rule["expr"] = broken
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.copy(PROMETHEUS / "alerts_test.yml", tmp_path)
    assert run(promtool, "check", "rules", "alerts.yml", cwd=tmp_path).returncode == 0
    result = run(promtool, "test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert f"alertname: {alert}," in result.stdout + result.stderr


@pytest.fixture()
def config_dir(tmp_path) -> Path:
    """prometheus.yml and alerts.yml with a targets/ folder as `modresnet serve` writes it."""
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path)
    (tmp_path / "targets").mkdir()
    target = [{"targets": ["127.0.0.1:8080"], "labels": {"job": "ray"}}]
    (tmp_path / "targets" / "node-127.0.0.1.json").write_text(json.dumps(target))
    return tmp_path


def test_the_example_config_passes_promtool_with_a_written_target_file(promtool, config_dir):
    result = run(promtool, "check", "config", str(config_dir / "prometheus.yml"), cwd=REPO)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output  # the targets/*.json glob found the file
    # alerts.yml, relative to the config, was found and loaded
    assert re.search(r"Checking \S*alerts\.yml\s+SUCCESS: \d+ rules found", output), output
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"] == [{"files": ["targets/*.json"]}]
    assert job["metric_relabel_configs"] == [RELABEL]


def test_the_config_check_rejects_a_target_file_of_another_shape(promtool, config_dir):
    (config_dir / "targets" / "bad.json").write_text(json.dumps({"targets": "127.0.0.1:8080"}))
    result = run(promtool, "check", "config", "prometheus.yml", cwd=config_dir)
    assert result.returncode != 0
    assert "checking SD file" in result.stdout + result.stderr


def test_the_podmonitor_relabels_as_the_example_config_does():
    (monitor,) = docs_of("PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    camel = {"source_labels": "sourceLabels", "target_label": "targetLabel"}
    want = {camel.get(k, k): v for k, v in RELABEL.items()}
    assert [
        {k: v for k, v in r.items() if k != "action"} for r in endpoint["metricRelabelings"]
    ] == [want]
    assert all(r.get("action", "replace") == "replace" for r in endpoint["metricRelabelings"])


def serving_section() -> str:
    text = (REPO / "docs" / "serving.md").read_text()
    start = text.index("## Metrics and alerts")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_the_docs_list_every_alert_and_every_series_the_rules_use():
    section = serving_section()
    for alert in ALERTS:
        assert alert in section, f"docs/serving.md does not list {alert}"
    ours, serves = set(), set()
    for rule in rules():
        for name in re.findall(r"(?<![\w:])(modresnet_\w+|ray_serve_\w+)(?![\w:])", rule["expr"]):
            (serves if name.startswith("ray_") else ours).add(
                re.sub(r"_(bucket|count|sum)$", "", name)
            )
    assert ours and serves
    for name in ours:
        assert f"| `{name}` |" in section, f"the series table of docs/serving.md lacks {name}"
    for name in serves:
        assert f"`{name}{{" in section, f"docs/serving.md does not name Serve's {name}"
    assert "promtool test rules cluster/prometheus/alerts_test.yml" in section
