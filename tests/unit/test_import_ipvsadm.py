"""``lvsctl config import ipvsadm``: ``ipvsadm -S -n`` rules become a cluster file that, applied,
rebuilds the same table; and keepalived's table of the corpus, recorded in the kernel VM, is
what lvsctl builds from the imported keepalived.conf files (replayed on the fake IPVS, which the
contract tests hold to the kernel's rules)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from lvsctl.cli import cli
from lvsctl.core.config import load_cluster, parse_cluster
from lvsctl.core.importers.common import DirectorOption, ImportOptions, SourceError
from lvsctl.core.importers.ipvsadm import import_ipvsadm
from lvsctl.director.dataplane import Outcome, apply_ops, plan_cluster
from lvsctl.director.ipvs_text import save_text
from lvsctl.testbed.fake_ipvs import FakeIpvs
from tests.conftest import ROOT

CORPUS = ROOT / "tests" / "golden" / "keepalived"
RECORDED = CORPUS / "corpus.ipvsadm"
CLI_OPTIONS = ["--zookeeper", "127.0.0.1:2181", "--directors", "lb1=192.0.2.2/24@eth0",
               "--directors", "lb2=192.0.2.3/24@eth0"]
OPTIONS = ImportOptions(("127.0.0.1:2181",), (DirectorOption.parse("lb1=192.0.2.2/24@eth0"),
                                              DirectorOption.parse("lb2=192.0.2.3/24@eth0")))


def _rules(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line and not line.startswith("#"))


def _apply_and_save(files: list[Path], fake: Path) -> list[str]:
    """What ``lvsctl ipvs apply`` of each file then ``ipvs save`` gives, on the fake IPVS."""
    ipvs = FakeIpvs(str(fake))
    for file in files:
        results = apply_ops(ipvs, plan_cluster(ipvs, load_cluster(str(file)).cluster).ops)
        assert all(r.outcome in (Outcome.APPLIED, Outcome.ALREADY) for r in results), results
    return _rules(save_text(ipvs.observe(stats=False)))


def test_the_imported_corpus_rebuilds_keepalived_s_recorded_table(tmp_path: Path) -> None:
    files = []
    for name in ("nat.conf", "dr.conf", "tun.conf", "ipv6.conf"):
        out = tmp_path / f"{name}.yaml"
        result = CliRunner().invoke(cli, ["config", "import", "keepalived", str(CORPUS / name),
                                          *CLI_OPTIONS, "--output", str(out)])
        assert result.exit_code == 0, result.output
        files.append(out)
    assert _apply_and_save(files, tmp_path / "fake.json") == _rules(RECORDED.read_text())


def _fill_inside_vip(text: str) -> str:
    """What an operator does with the NAT placeholder: name the real servers' gateway."""
    doc = yaml.safe_load(text)
    doc["vips"] = [v for v in doc["vips"] if not v.get("inside")]
    doc["vips"].append({"address": "10.0.1.1", "interface": "eth1", "inside": True,
                        "network": "10.0.1.0/24"})
    return yaml.safe_dump(doc)


def test_ipvsadm_rules_round_trip(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["config", "import", "ipvsadm", str(RECORDED),
                                      *CLI_OPTIONS, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # NAT real servers need their gateway VIP, which no rule names.
    assert data["placeholders"] == ["inside VIP (the NAT gateway)", "inside VIP interface",
                                    "the NAT real servers' network"]
    filled = tmp_path / "cluster.yaml"
    filled.write_text(_fill_inside_vip(data["text"]))
    cluster = parse_cluster(filled.read_text(), "cluster.yaml").cluster
    assert len(cluster.services) == 9
    assert _apply_and_save([filled], tmp_path / "fake.json") == _rules(RECORDED.read_text())


def test_what_the_rules_say_is_kept() -> None:
    result = import_ipvsadm(RECORDED.read_text(), "rules", OPTIONS)
    services = {s["name"]: s for s in yaml.safe_load(result.text)["services"]}
    web = services["tcp-192-0-2-10-80"]
    assert web["persistence"] == {"timeout": "600s", "netmask": "255.255.255.0"}
    assert web["forwarding"] == "nat" and web["scheduler"] == "wrr"
    assert [(r["address"], r["port"], r.get("weight", 1)) for r in web["realservers"]] == [
        ("10.0.1.11", 8080, 3), ("10.0.1.12", 8080, 1), ("10.0.1.13", 8081, 2)]
    assert services["udp-192-0-2-21-53"]["flags"] == ["sh-port"]
    assert services["fwmark-5"]["fwmark"] == 5
    assert services["tcp-192-0-2-50-8080"]["forwarding"] == "tun"
    assert "# rules:" in result.text  # each service names its rule's line
    notes = [f.line() for f in result.findings if f.kind == "note"]
    assert "rules:1: ipvsadm rules carry no health checks: every real server is taken as " \
        "healthy until checks are added" in notes


def test_stdin_and_refusals(tmp_path: Path) -> None:
    rules = ("-A -t 192.0.2.10:80 -s rr\n"
             "-a -t 192.0.2.10:80 -r 192.0.2.21:80 -g -w 2\n"
             "-a -t 192.0.2.10:80 -r 192.0.2.22:80 -i -w 1\n"
             "-A -u [2001:db8::10]:53 -s sh -b flag-2\n"
             "-a -u [2001:db8::10]:53 -r [2001:db8::21]:53 -g -w 1 -x 100 -y 0\n")
    result = CliRunner().invoke(cli, ["config", "import", "ipvsadm", "-", *CLI_OPTIONS],
                                input=rules)
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    assert [rs["address"] for rs in doc["services"][0]["realservers"]] == ["192.0.2.21"]
    assert doc["services"][1]["vip"] == "2001:db8::10"
    assert doc["services"][1]["flags"] == ["sh-port"]  # flag-2 of sh
    assert ("<stdin>:3: refused: 192.0.2.22:80 forwards by tun and the service's others by dr"
            in result.stderr)
    assert "<stdin>:5: not imported: -x 100: lvsctl sets no connection thresholds" \
        in result.stderr
    strict = CliRunner().invoke(cli, ["config", "import", "ipvsadm", "-", *CLI_OPTIONS,
                                      "--strict"], input=rules)
    assert strict.exit_code == 1 and strict.stdout == ""


@pytest.mark.parametrize(("text", "expected"), [
    ("-A -t 192.0.2.10:80 -s rr\n-X\n", "r:2: '-X': expected -A or -a lines"),
    ("-a -t 192.0.2.10:80 -r 192.0.2.21:80 -g\n",
     "r:1: a real server of a service no -A line added before"),
    ("-A -t 192.0.2.300:80 -s rr\n", "r:1: '192.0.2.300:80' is not ADDRESS:PORT"),
    ("-A -t 192.0.2.10:80 -s bogus\n", "r:1: scheduler 'bogus' is not one the kernel has"),
    ("", "r:1: no service (-A line): nothing to import"),
])
def test_bad_rules_are_one_line(text: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        import_ipvsadm(text, "r", OPTIONS)
    assert str(caught.value).startswith(expected)
    path = tmp_path / "r"
    path.write_text(text)
    out = tmp_path / "out.yaml"
    result = CliRunner().invoke(cli, ["config", "import", "ipvsadm", str(path), "-o", str(out)])
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert not out.exists()
