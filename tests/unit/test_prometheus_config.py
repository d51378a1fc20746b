"""The test bed's Prometheus config and command line (the server itself runs in
tests/integration/test_prometheus_testbed.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from lvsctl.testbed.prometheus import PrometheusServer, config_yaml


def test_config_scrapes_the_targets_every_second() -> None:
    data = yaml.safe_load(config_yaml(["10.77.0.2:9180", "10.77.0.3:9180"], job="lvsctl-lab"))
    (job,) = data["scrape_configs"]
    assert job["job_name"] == "lvsctl-lab"
    assert job["scrape_interval"] == job["scrape_timeout"] == "1s"
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["10.77.0.2:9180", "10.77.0.3:9180"]}]


def test_command_keeps_its_data_in_the_workdir_and_enters_the_namespace(tmp_path: Path) -> None:
    server = PrometheusServer(tmp_path, "10.77.0.50:9090", ["10.77.0.2:9180"], netns="lvlab-x")
    argv = server.argv()
    assert argv[:4] == ["ip", "netns", "exec", "lvlab-x"]
    assert f"--storage.tsdb.path={tmp_path / 'data'}" in argv
    assert "--web.listen-address=10.77.0.50:9090" in argv
    assert server.command() == argv[4:]
    server.prepare()
    assert "10.77.0.2:9180" in (tmp_path / "prometheus.yml").read_text()
    client = server.client()
    assert (client.host, client.port, client.netns) == ("10.77.0.50", 9090, "lvlab-x")
