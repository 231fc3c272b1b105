"""The Prometheus target file `modresnet serve` and `modresnet cluster up` write (no Ray): the
nodes it lists, its file_sd shape, and the line that says where it is. (Written by a real
`modresnet serve` and scraped by a real Prometheus: tests/e2e/serve/.)"""

from __future__ import annotations

import json

from jobs.cluster.prometheus import node_targets, targets_dir, where, write_targets


def test_the_targets_are_each_alive_nodes_metrics_export_port():
    nodes = [
        {"NodeManagerAddress": "10.0.0.5", "MetricsExportPort": 44321, "Alive": True},
        {"NodeManagerAddress": "10.0.0.6", "MetricsExportPort": 44321, "Alive": True},
        {"NodeManagerAddress": "10.0.0.7", "MetricsExportPort": 44321, "Alive": False},
        {"NodeManagerAddress": "10.0.0.8", "MetricsExportPort": 0, "Alive": True},
        {"NodeManagerAddress": "10.0.0.5", "MetricsExportPort": 44321, "Alive": True},
    ]
    assert node_targets(nodes) == ["10.0.0.5:44321", "10.0.0.6:44321"]


def test_the_file_is_file_sd_json_written_whole_where_it_is_said(tmp_path, monkeypatch):
    monkeypatch.setenv("MODRESNET_HOME", str(tmp_path / "home"))
    assert targets_dir() == tmp_path / "home" / "prometheus" / "targets"
    path = write_targets(targets_dir() / "a.json", ["10.0.0.5:44321"], ["10.0.0.5:9101"])
    assert json.loads(path.read_text()) == [
        {"targets": ["10.0.0.5:44321"], "labels": {"job": "ray"}},
        {"targets": ["10.0.0.5:9101"], "labels": {"job": "haproxy"}},
    ]
    write_targets(path, ["10.0.0.6:44321"])  # replaced in place, no HAProxy group
    assert json.loads(path.read_text()) == [
        {"targets": ["10.0.0.6:44321"], "labels": {"job": "ray"}}
    ]
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temp file left
    line = where(path, ["10.0.0.6:44321"], ["10.0.0.6:9101"])
    assert line == (
        "metrics: Ray metrics at 10.0.0.6:44321; HAProxy's at http://10.0.0.6:9101/metrics; "
        f"Prometheus file_sd targets in {path}"
    )
