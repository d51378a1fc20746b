"""``lvsctl config import keepalived``: the corpus imports and validates, the report names each
line that did not carry over, refusals are never silent, and bad input is one line, exit 1,
nothing written.

The golden files under tests/golden/keepalived/expected are the reviewed output. To accept a
deliberate change: LVSCTL_UPDATE_GOLDEN=1 pytest tests/unit/test_import_keepalived.py.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.core.config import load_cluster, parse_cluster
from lvsctl.core.errors import ConfigError
from lvsctl.core.importers.common import (
    ALL_FEATURES,
    DirectorOption,
    ImportOptions,
    SourceError,
    supported_features,
)
from lvsctl.core.importers.keepalived import draft_keepalived, import_keepalived
from lvsctl.core.importers.keepalived_parse import MAX_FILE_BYTES, parse_file
from tests.conftest import ROOT

CORPUS = ROOT / "tests" / "golden" / "keepalived"
EXPECTED = CORPUS / "expected"
UPDATE = os.environ.get("LVSCTL_UPDATE_GOLDEN") == "1"
ORACLE_FILES = ["nat.conf", "dr.conf", "tun.conf", "ipv6.conf"]
OPTIONS = ImportOptions(
    zookeeper=("127.0.0.1:2181",),
    directors=(DirectorOption.parse("lb1=192.0.2.2/24@eth0"),
               DirectorOption.parse("lb2=192.0.2.3/24@eth0")),
)
CLI_OPTIONS = ["--zookeeper", "127.0.0.1:2181", "--directors", "lb1=192.0.2.2/24@eth0",
               "--directors", "lb2=192.0.2.3/24@eth0"]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Source names in comments and reports are the paths as given: relative to the repository.
    monkeypatch.chdir(ROOT)


def _rel(name: str) -> str:
    return f"tests/golden/keepalived/{name}"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- the corpus ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ORACLE_FILES)
def test_corpus_imports_and_validates(name: str, tmp_path: Path) -> None:
    result = import_keepalived(_rel(name), OPTIONS)
    assert result.placeholders == ()
    out = _write(tmp_path / "cluster.yaml", result.text)
    cluster = load_cluster(out).cluster  # config check passes
    assert cluster.services
    assert not [f for f in result.findings if f.kind == "refused"]


@pytest.mark.parametrize(("name", "features"), [
    ("nat.conf", frozenset()), ("dr.conf", frozenset()), ("tun.conf", frozenset()),
    ("ipv6.conf", frozenset()), ("features.conf", ALL_FEATURES),
])
def test_output_matches_golden(name: str, features: frozenset[str]) -> None:
    text, _ = draft_keepalived(_rel(name), OPTIONS, features)
    suffix = "all-features" if features else "today"
    golden = EXPECTED / f"{name.removesuffix('.conf')}.{suffix}.yaml"
    if UPDATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs (LVSCTL_UPDATE_GOLDEN=1 to accept)"


def test_nat_maps_each_construct() -> None:
    result = import_keepalived(_rel("nat.conf"), OPTIONS, frozenset())
    doc = yaml.safe_load(result.text)
    web, mark = doc["services"]
    assert web["vip"] == "192.0.2.10" and web["port"] == 80
    assert web["forwarding"] == "nat" and web["scheduler"] == "wrr"
    assert web["persistence"] == {"timeout": "600s", "netmask": "255.255.255.0"}
    assert web["sorry_server"] == {"address": "10.0.1.99", "port": 8080}
    assert [(r["address"], r["port"], r["weight"]) for r in web["realservers"]] == [
        ("10.0.1.11", 8080, 3), ("10.0.1.12", 8080, 1), ("10.0.1.13", 8081, 2)]
    http = web["realservers"][0]["check"]
    # nb_get_retry 2: down after the first failure and two retries; up after one success.
    assert http == {"type": "http", "interval": "3s", "timeout": "2s", "rise": 1, "fall": 3,
                    "path": "/healthz", "status": [200]}
    assert mark["fwmark"] == 5
    assert {"address": "10.0.1.1", "interface": "eth1", "inside": True,
            "network": "10.0.1.0/24"} in doc["vips"]
    assert doc["directors"][0]["sync"] == {"interface": "eth1", "id": 7}
    assert doc["cluster"] == "lvs-nat"
    # The comments say where each piece came from.
    assert "port: 80\n" in result.text
    assert "# tests/golden/keepalived/nat.conf:29 virtual_server 192.0.2.10 80" in result.text
    assert "scheduler: wrr  # tests/golden/keepalived/nat.conf:31" in result.text


def test_group_range_and_include_expand_to_one_service_per_address() -> None:
    result = import_keepalived(_rel("tun.conf"), OPTIONS, frozenset())
    doc = yaml.safe_load(result.text)
    grouped = [s for s in doc["services"] if s["name"].startswith("web-range")]
    assert [(s["vip"], s["port"], s["protocol"]) for s in grouped] == [
        ("192.0.2.40", 80, "udp"), ("192.0.2.41", 80, "udp"), ("192.0.2.42", 80, "udp")]
    assert all(s["persistence"] == {"timeout": "300s"} for s in grouped)
    assert "tests/golden/keepalived/conf.d/group.conf:6 virtual_server group web-range" \
        in result.text
    # keepalived itself takes UDP when a virtual_server names no protocol: said, not hidden.
    notes = [f.line() for f in result.findings if f.kind == "note"]
    assert any("group.conf:6: no protocol" in n for n in notes)


# -- the report ---------------------------------------------------------------------------------


def test_report_lists_unmapped_lines_with_file_and_line() -> None:
    result = import_keepalived(_rel("nat.conf"), OPTIONS, frozenset())
    lines = [f.line() for f in result.findings if f.kind == "unmapped"]
    assert lines == [
        "tests/golden/keepalived/nat.conf:6: notification_email: SMTP alerts: lvsctl sends no mail",
        "tests/golden/keepalived/nat.conf:9: smtp_server: SMTP alerts: lvsctl sends no mail",
        "tests/golden/keepalived/nat.conf:11: lvs_timeouts: this lvsctl's cluster file has no "
        "ipvs_timeouts",
        "tests/golden/keepalived/nat.conf:15: state: VRRP role: lvsctl elects the active "
        "director through ZooKeeper",
        "tests/golden/keepalived/nat.conf:17: virtual_router_id: VRRP router id: lvsctl has no "
        "VRRP",
        "tests/golden/keepalived/nat.conf:18: priority: VRRP priority: lvsctl elects the active "
        "director through ZooKeeper",
        "tests/golden/keepalived/nat.conf:19: advert_int: VRRP advertisement interval: lvsctl's "
        "failover timing is the ZooKeeper session (zookeeper.session_timeout)",
        "tests/golden/keepalived/nat.conf:24: track_script: VRRP tracking: lvsctl has no tracked "
        "scripts",
        "tests/golden/keepalived/nat.conf:47: delay_before_retry 1: lvsctl probes a failing "
        "server at the check interval",
    ]


def test_cli_report_on_stderr_file_on_stdout_exit_0() -> None:
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", _rel("nat.conf"),
                                      *CLI_OPTIONS])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# lvsctl cluster file imported from")
    parse_cluster(result.stdout, "stdout.yaml")
    assert ("tests/golden/keepalived/nat.conf:18: not imported: priority: VRRP priority"
            in result.stderr)
    assert "line(s) not imported, 0 refused, 0 placeholder(s) to fill" in result.stderr


def test_strict_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cluster.yaml"
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", _rel("nat.conf"),
                                      *CLI_OPTIONS, "--strict", "--output", str(out)])
    assert result.exit_code == 1
    assert not out.exists()
    assert "--strict: not written" in result.stderr
    # A file with nothing unmapped passes --strict.
    clean = _write(tmp_path / "clean.conf", "virtual_server 192.0.2.10 80 {\n"
                   "  lb_algo rr\n  lb_kind DR\n  protocol TCP\n"
                   "  real_server 192.0.2.21 80 {\n    weight 2\n  }\n}\n")
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", str(clean), *CLI_OPTIONS,
                                      "--strict", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert load_cluster(out).cluster.services[0].realservers[0].weight == 2


def test_json_carries_file_report_and_placeholders() -> None:
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", _rel("dr.conf"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    assert {"file": "tests/golden/keepalived/dr.conf", "line": 10, "kind": "unmapped",
            "reason": "virtual_router_id: VRRP router id: lvsctl has no VRRP"} in data["findings"]
    assert "ZooKeeper HOST:PORT" in data["placeholders"]
    assert "director name" in data["placeholders"]
    assert data["text"].startswith("# lvsctl cluster file")


def test_placeholders_are_refused_by_config_check(tmp_path: Path) -> None:
    out = tmp_path / "cluster.yaml"
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", _rel("dr.conf"),
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    check = CliRunner().invoke(cli, ["config", "check", str(out)])
    assert check.exit_code == 1
    assert "zookeeper.hosts[0]: '<REPLACE ME>' is not host:port" in check.stderr
    assert "directors[0].address: '<REPLACE ME>' is not an address" in check.stderr
    # Filled in, it passes.
    text = out.read_text()
    for placeholder, value in [('hosts: ["<REPLACE ME>"]', 'hosts: ["127.0.0.1:2181"]')]:
        text = text.replace(placeholder, value)
    doc = yaml.safe_load(text)
    doc["directors"] = [
        {"name": n, "address": f"192.0.2.{i}/24", "interface": "eth0",
         "peer": {"address": f"192.0.2.{i}"}} for i, n in ((2, "lb1"), (3, "lb2"))]
    parse_cluster(yaml.safe_dump(doc), "filled.yaml")


def test_a_nat_service_without_an_inside_vip_gets_a_placeholder(tmp_path: Path) -> None:
    conf = _write(tmp_path / "k.conf", "virtual_server 192.0.2.10 80 {\n  lb_kind NAT\n"
                  "  protocol TCP\n  real_server 10.0.9.5 8080 {\n  }\n}\n")
    result = import_keepalived(conf, OPTIONS)
    assert "inside VIP (the NAT gateway)" in result.placeholders
    with pytest.raises(ConfigError):
        parse_cluster(result.text, "k.yaml")


# -- new cluster-file keys (emitted text; validated end to end once the loader knows them) -----


def test_new_keys_are_emitted_when_the_loader_knows_them() -> None:
    text, draft = draft_keepalived(_rel("features.conf"), OPTIONS, ALL_FEATURES)
    doc = yaml.safe_load(text)
    assert doc["ipvs_timeouts"] == {"tcp": "900s", "tcp_fin": "120s", "udp": "300s"}
    www, dns, smtp = doc["services"]
    assert www["alpha"] is True and www["quorum"] == 1 and www["quorum_hysteresis"] == 1
    first = www["realservers"][0]
    assert first["on_failure"] == "weight0"
    assert [c["type"] for c in first["checks"]] == ["tcp", "http", "http"]  # two urls
    assert [c.get("path") for c in first["checks"]] == [None, "/healthz", "/ready"]
    assert first["checks"][2]["digest"] == "md5:9b3a0c85a887a256d6939da88aabd8cd"
    assert first["checks"][1]["status"] == ["200-299", 301]
    assert dns["ops"] is True and dns["protocol"] == "udp"
    smtp_checks = smtp["realservers"][0]["checks"]
    assert smtp_checks[0] == {"type": "smtp", "interval": "10s", "timeout": "3s", "rise": 1,
                              "fall": 2, "helo_name": "lvs.example.com"}
    assert smtp_checks[1]["type"] == "ping"
    assert not [f for f in draft.findings if "this lvsctl" in f.reason]


def test_new_keys_are_reported_when_the_loader_lacks_them() -> None:
    text, draft = draft_keepalived(_rel("features.conf"), OPTIONS, frozenset())
    for key in ("ipvs_timeouts", "alpha", "quorum_hysteresis", "ops", "checks:", "on_failure",
                "type: smtp", "type: ping"):
        assert key not in text, key
    reasons = {f.where.line: f.reason for f in draft.findings if f.kind == "unmapped"}
    assert reasons[5] == "lvs_timeouts: this lvsctl's cluster file has no ipvs_timeouts"
    assert reasons[24] == "alpha: this lvsctl's cluster file has no alpha"
    assert reasons[70] == "ops: this lvsctl's cluster file has no ops"
    assert reasons[98] == "SMTP_CHECK: this lvsctl has no smtp check"
    assert "the first is kept" in reasons[36]  # the second check of rs 192.0.2.71
    assert "inhibit_on_failure for one real server" in reasons[31]


def test_supported_features_follow_the_schema() -> None:
    from lvsctl.core import schema

    features = supported_features()
    assert ("ops" in features) == ("ops" in schema.ServiceFile.model_fields)
    assert ("checks" in features) == ("checks" in schema.RealServerFile.model_fields)
    assert ("ipvs_timeouts" in features) == ("ipvs_timeouts" in schema.ClusterFile.model_fields)


def test_features_file_validates_with_what_this_lvsctl_knows() -> None:
    result = import_keepalived(_rel("features.conf"), OPTIONS)
    load = parse_cluster(result.text, "features.yaml")
    assert len(load.cluster.services) == 3


# -- refusals and checks that need a shell ------------------------------------------------------


def test_refusals_are_reported_and_left_out_never_changed() -> None:
    result = import_keepalived(_rel("features.conf"), OPTIONS, frozenset())
    refused = {f.where.line: f.reason for f in result.findings if f.kind == "refused"}
    assert refused[60].startswith("real_server 192.0.2.73 8080: in dr mode the real server's "
                                  "port must be the service port 80")
    assert "# refused (tests/golden/keepalived/features.conf:60): real_server 192.0.2.73 8080" \
        in result.text
    assert "192.0.2.73" not in yaml.safe_load(result.text)["services"][0].__repr__()
    assert refused[115].startswith("misc_path needs a shell")
    assert refused[71].startswith("quorum 2 counts live weight in keepalived")
    doc = yaml.safe_load(result.text)
    misc = doc["services"][2]["realservers"][1]["check"]
    assert misc["command"] == ["/usr/lib/nagios/plugins/check_smtp", "-H", "192.0.2.75", "-t", "3"]
    assert misc["dynamic"] is True and misc["timeout"] == "4s"
    assert "check" not in doc["services"][2]["realservers"][2]  # the shell one


def test_timeout_not_below_interval_is_reported(tmp_path: Path) -> None:
    conf = _write(tmp_path / "k.conf", "virtual_server 192.0.2.10 80 {\n  delay_loop 2\n"
                  "  lb_kind DR\n  protocol TCP\n  real_server 192.0.2.21 80 {\n"
                  "    TCP_CHECK {\n      connect_timeout 5\n    }\n  }\n}\n")
    result = import_keepalived(conf, OPTIONS)
    refused = [f.line() for f in result.findings if f.kind == "refused"]
    assert refused == [f"{conf}:7: check timeout 5s is not shorter than delay_loop 2s, which "
                       "lvsctl requires: timeout 1s is written"]


def test_keywords_in_any_case_with_a_note_where_keepalived_differs(tmp_path: Path) -> None:
    conf = _write(tmp_path / "k.conf", "Virtual_Server 192.0.2.10 80 {\n  LB_ALGO RR\n"
                  "  lb_kind dr\n  protocol tcp\n  real_server 192.0.2.21 80 {\n"
                  "    tcp_check {\n      connect_timeout 1\n    }\n  }\n}\n")
    result = import_keepalived(conf, OPTIONS)
    service = yaml.safe_load(result.text)["services"][0]
    assert (service["scheduler"], service["forwarding"]) == ("rr", "dr")
    assert service["realservers"][0]["check"]["type"] == "tcp"
    notes = [f.line() for f in result.findings if f.kind == "note"]
    assert f"{conf}:1: Virtual_Server: keepalived knows only virtual_server (keywords are " \
        "case-sensitive) and ignores this line; imported as virtual_server" in notes
    assert any(n.startswith(f"{conf}:2: LB_ALGO: keepalived knows only lb_algo") for n in notes)
    assert any(n.startswith(f"{conf}:2: lb_algo RR: keepalived ignores this spelling")
               for n in notes)
    assert any(n.startswith(f"{conf}:3: lb_kind dr: keepalived ignores") for n in notes)


# -- bad input: one line FILE:LINE: reason, exit 1, nothing written -----------------------------


BAD = [
    ("unclosed.conf", "virtual_server 192.0.2.10 80 {\n  lb_kind DR\n",
     "unclosed.conf:1: the block of 'virtual_server 192.0.2.10 80' is never closed"),
    ("extra.conf", "virtual_server 192.0.2.10 80 {\n}\n}\n",
     "extra.conf:3: '}' closes no open block"),
    ("yaml.conf", "cluster: web\nservices: []\n",
     "yaml.conf:1: 'cluster:' is not keepalived syntax"),
    ("prose.conf", "hello world\n", "prose.conf:1: no virtual_server in the file"),
    ("quote.conf", 'virtual_server 192.0.2.10 80 {\n  misc_path "/bin/true\n}\n',
     "quote.conf:2: a quoted string is not closed on its line"),
    ("kind.conf", "virtual_server 192.0.2.10 80 {\n  lb_kind XYZ\n}\n",
     "kind.conf:2: lb_kind 'XYZ': expected NAT, DR or TUN"),
    ("nul.conf", "virtual_server 192.0.2.10 80 {\n\0\n}\n",
     "nul.conf:2: a NUL byte: this is not a keepalived.conf (text) file"),
    ("param.conf", "$PORT=80\nvirtual_server 192.0.2.10 $PORT {\n}\n",
     "param.conf:1: keepalived parameters ($NAME=...) are not imported"),
    ("deep.conf", "a {\n" * 20 + "}\n" * 20, "deep.conf:17: blocks nest deeper than 16"),
    ("include.conf", "include missing.conf\n",
     "include.conf:1: include missing.conf: no such file"),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_exit_1_nothing_written(name: str, text: str, expected: str,
                                                      tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / name, text)
    out = tmp_path / "out.yaml"
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", name, "--output",
                                      str(out)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert not out.exists()


def test_include_loop_names_the_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    _write(tmp_path / "a.conf", "include d/b.conf\n")
    _write(tmp_path / "d" / "b.conf", "! relative to d/\ninclude ../a.conf\n")
    with pytest.raises(SourceError) as caught:
        parse_file("a.conf")
    assert str(caught.value) == "d/b.conf:2: include loop: a.conf -> b.conf -> a.conf"


def test_a_50_mb_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.conf"
    with big.open("wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # sparse: nothing is written, nothing is read
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", str(big), "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error == {"file": str(big), "line": 1, "reason":
                     f"the file is {50 * 1024 * 1024} bytes; an import reads at most "
                     f"{MAX_FILE_BYTES // (1024 * 1024)} MiB per file"}


def test_include_glob_is_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    _write(tmp_path / "sub" / "one.conf", "virtual_server 192.0.2.10 80 {\n  lb_kind DR\n"
           "  protocol TCP\n  real_server 192.0.2.21 80 {\n  }\n}\n")
    _write(tmp_path / "sub" / "two.conf", "virtual_server 192.0.2.11 80 {\n  lb_kind DR\n"
           "  protocol TCP\n  real_server 192.0.2.21 80 {\n  }\n}\n")
    main = _write(tmp_path / "keepalived.conf", "# the services\ninclude sub/*.conf\n")
    result = import_keepalived(main, OPTIONS)
    assert [s["vip"] for s in yaml.safe_load(result.text)["services"]] == [
        "192.0.2.10", "192.0.2.11"]


def test_range_forms_expand(tmp_path: Path) -> None:
    conf = _write(tmp_path / "k.conf", "virtual_server_group g {\n  10.0.0.1-3 80\n"
                  "  10.0.0.8/31 80\n  10.0.0.250-10.0.1.1 443\n  fwmark 9\n}\n"
                  "virtual_server group g {\n  lb_kind TUN\n  protocol TCP\n"
                  "  real_server 10.9.0.1 {\n  }\n}\n")
    text, draft = draft_keepalived(conf, OPTIONS)
    services = yaml.safe_load(text)["services"]
    assert [(s.get("vip"), s.get("port"), s.get("fwmark")) for s in services] == [
        ("10.0.0.1", 80, None), ("10.0.0.2", 80, None), ("10.0.0.3", 80, None),
        ("10.0.0.8", 80, None), ("10.0.0.9", 80, None),
        ("10.0.0.250", 443, None), ("10.0.0.251", 443, None), ("10.0.0.252", 443, None),
        ("10.0.0.253", 443, None), ("10.0.0.254", 443, None), ("10.0.0.255", 443, None),
        ("10.0.1.0", 443, None), ("10.0.1.1", 443, None), (None, None, 9)]
    # No port on the real server: the service's (tun keeps ports).
    assert {rs["address"] for s in services for rs in s["realservers"]} == {"10.9.0.1"}
    assert "port" not in repr([s["realservers"] for s in services])
    assert not [f for f in draft.findings if f.kind == "refused"]


def test_sync_daemon_id_defaults_to_its_instance_s_vrid(tmp_path: Path) -> None:
    conf = _write(tmp_path / "k.conf", "global_defs {\n  lvs_sync_daemon eth2 VI_1\n}\n"
                  "vrrp_instance VI_1 {\n  interface eth0\n  virtual_router_id 42\n"
                  "  virtual_ipaddress {\n    192.0.2.10\n  }\n}\n"
                  "virtual_server 192.0.2.10 80 {\n  lb_kind DR\n  protocol TCP\n"
                  "  real_server 192.0.2.21 80 {\n  }\n}\n")
    doc = yaml.safe_load(import_keepalived(conf, OPTIONS).text)
    assert [d["sync"] for d in doc["directors"]] == [{"interface": "eth2", "id": 42}] * 2


def test_what_the_loader_would_refuse_is_reported_and_left_out(tmp_path: Path) -> None:
    conf = _write(tmp_path / "k.conf", """\
virtual_server 192.0.2.10 80 {
  lb_kind DR
  protocol TCP
  sorry_server 192.0.2.99 8080
  real_server 192.0.2.21 80 {
  }
  real_server 2001:db8::21 80 {
  }
  real_server 192.0.2.21 80 {
  }
}
virtual_server 192.0.2.10 80 {
  lb_kind DR
  protocol TCP
  real_server 192.0.2.22 80 {
  }
}
""")
    result = import_keepalived(conf, OPTIONS)
    refused = [f.line() for f in result.findings if f.kind == "refused"]
    assert refused == [
        f"{conf}:4: sorry_server 192.0.2.99 port 8080: in dr mode it must be the service port "
        "80: left out",
        f"{conf}:7: real_server 2001:db8::21: not an ipv4 address like the service's (lvsctl "
        "does not mix families); left out",
        f"{conf}:9: real_server 192.0.2.21 80 is already given at {conf}:5: left out",
        f"{conf}:12: the same IPVS service as {conf}:1 (keepalived would merge or fail): left out",
    ]
    services = yaml.safe_load(result.text)["services"]
    assert len(services) == 1 and "sorry_server" not in services[0]
    assert [rs["address"] for rs in services[0]["realservers"]] == ["192.0.2.21"]


def test_mangled_files_fail_as_one_line_or_import_valid(tmp_path: Path) -> None:
    """Lines dropped, words swapped, junk inserted: SourceError or a file the loader takes."""
    rng = random.Random(18)
    sources = [(CORPUS / n).read_text().splitlines() for n in ("nat.conf", "features.conf")]
    words = ["{", "}", "0", "abc", "fwmark", "group", "10.0.0.1-5", "::1", "99999", '"x', "TUN",
             "real_server", "url", "1.2.3.4/33", "connect_port", "weight", "persistence_timeout"]
    conf = tmp_path / "k.conf"
    for _ in range(100):
        lines = list(rng.choice(sources))
        for _ in range(rng.randint(1, 4)):
            j = rng.randrange(len(lines))
            op = rng.random()
            if op < 0.3:
                del lines[j]
            elif op < 0.7 and lines[j].split():
                parts = lines[j].split()
                parts[rng.randrange(len(parts))] = rng.choice(words)
                lines[j] = " ".join(parts)
            else:
                lines.insert(j, f"{rng.choice(words)} {rng.choice(words)}")
        conf.write_text("\n".join(lines))
        try:
            result = import_keepalived(conf, OPTIONS)
        except SourceError:
            continue
        if not result.placeholders:  # (with placeholders, finish validated the filled text)
            parse_cluster(result.text, "k.yaml")


def test_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "missing" / "cluster.yaml"
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", _rel("dr.conf"),
                                      *CLI_OPTIONS, "--output", str(out)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == f"{out}: cannot write: No such file or directory"


def test_one_director_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", _rel("dr.conf"),
                                      "--directors", "lb1=192.0.2.2/24@eth0"])
    assert result.exit_code == 2
    assert "give both directors" in result.stderr
    result = CliRunner().invoke(cli, ["config", "import", "keepalived", _rel("dr.conf"),
                                      "--directors", "lb1=192.0.2.2@eth0",
                                      "--directors", "lb2=192.0.2.3/24@eth0"])
    assert result.exit_code == 2
    assert "needs its prefix length" in result.stderr
