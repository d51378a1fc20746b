"""The alert rules and the Grafana dashboard in deploy/: promtool checks and unit-tests the
rules, parses every dashboard query, and each metric name they use is one a live scrape of the
director's collector really exposes."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from lvsctl.director.metrics import BuildInfo, ScrapeCache
from lvsctl.testbed.prometheus import synthetic_snapshot

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "lvsctl.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "lvsctl.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "lvsctl.json"
NAME = re.compile(r"\blvsctl_[a-zA-Z0-9_]*[a-zA-Z0-9]")
# Grafana's variables, replaced by values a real dashboard would send.
VARIABLES = {"$__rate_interval": "1m", "$job": "lvsctl.*", "$service": ".*"}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    assert found is not None, "promtool is not installed (scripts/packages.txt lists prometheus)"
    return subprocess.run([found, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rule_exprs() -> list[str]:
    data = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in data["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in data["panels"] for t in panel.get("targets", [])]
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["query"]["query"])
    return exprs


def substituted(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def test_promtool_checks_the_rules() -> None:
    proc = promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 10 rules found" in proc.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    proc = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout
    # Every alert of the rules file is exercised firing at least once.
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"]
             if case["exp_alerts"]}
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
              for rule in group["rules"]}
    assert fired == alerts


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    exprs = [e for e in dashboard_exprs() if not e.startswith("label_values(")]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{i}", "expr": substituted(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(exprs) >= 30


async def _scrape_over_http() -> str:
    """GET /metrics from a real aiohttp server serving the collector (ScrapeCache)."""
    cache = ScrapeCache(lambda: synthetic_snapshot(2, 3), BuildInfo("0.1.0", "3.11"))

    async def metrics(_: web.Request) -> web.Response:
        body, content_type = await cache.scrape()
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.add_routes([web.get("/metrics", metrics)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]

        def get() -> Any:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30) as reply:
                assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                return reply.read().decode()

        return str(await asyncio.to_thread(get))
    finally:
        await runner.cleanup()


def test_every_metric_the_rules_and_dashboard_use_is_exposed() -> None:
    text = asyncio.run(_scrape_over_http())
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    used_by_rules = {n for e in rule_exprs() for n in NAME.findall(e)}
    used_by_dashboard = {n for e in dashboard_exprs() for n in NAME.findall(e)}
    assert used_by_rules - exposed == set()
    assert used_by_dashboard - exposed == set()
    assert len(used_by_rules) >= 9 and len(used_by_dashboard) >= 35
