"""Values the consumer (the kernel, ZooKeeper, the YAML parser) would refuse are refused first.

Each rule is a row: the key path that is wrong and the words of its one-line error. The
interface-name rule is also checked against a plain restatement of the kernel's
dev_valid_name() over arbitrary text (hypothesis).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from lvsctl.core import config as config_module
from lvsctl.core import schema
from lvsctl.core.config import load_cluster, parse_cluster, parse_yaml, read_file_text
from lvsctl.core.errors import ConfigError
from lvsctl.core.node import load_node
from lvsctl.templates.render import SetupError, check_interface, check_name
from tests.conftest import MINIMAL
from tests.unit.test_config import mutate

BAD = [
    # interface names: bytes, not characters; the kernel's forbidden characters; whole string
    ("vips[0].interface", "eth0\n", "vips[0].interface", "holds white space"),
    ("vips[0].interface", "é" * 8, "vips[0].interface", "16 bytes (UTF-8), not 1 to 15"),
    ("vips[0].interface", "eth\xa00", "vips[0].interface", "holds white space"),
    ("vips[0].interface", "..", "vips[0].interface", "'.' and '..' are not names"),
    ("vips[0].interface", "eth0:1", "vips[0].interface", "holds '/' or ':'"),
    ("directors[0].interface", "", "directors[0].interface", "0 bytes"),
    ("directors[0].interface", "eth\x070", "directors[0].interface", "control character"),
    # names and other whole-string rules
    ("services[0].name", "www\n", "services[0].name", "names start with a letter"),
    ("services[0].check.path", "/health\n", "services[0].check.path", "expected form"),
    ("cluster", "t\n", "cluster", "names start with a letter"),
    # VIPs that cannot work, and overlaps
    ("vips[0].address", "0.0.0.0", "vips[0].address", "the unspecified address"),
    ("vips[0].address", "255.255.255.255", "vips[0].address", "the broadcast address"),
    ("vips[0].address", "224.0.0.5", "vips[0].address", "a multicast address"),
    ("vips[0].address", "127.0.0.2", "vips[0].address", "a loopback address"),
    ("vips[0].address", "169.254.1.1", "vips[0].address", "a link-local address"),
    ("vips[0].address", "240.0.0.1", "vips[0].address", "reserved"),
    ("vips[1].address", "::1", "vips[1].address", "a loopback address"),
    ("vips[1].address", "fe80::10", "vips[1].address", "a link-local address"),
    ("vips[1].address", "ff02::1", "vips[1].address", "a multicast address"),
    ("vips[1].address", "::", "vips[1].address", "the unspecified address"),
    ("vips[0].address", "192.0.2.2", "vips[0].address",
     "is the address of directors[0] (lb1): a VIP needs an address of its own"),
    ("services[0].realservers[0].address", "192.0.2.10", "services[0].realservers[0].address",
     "is the address of vips[0]: a real server cannot be a VIP"),
    ("services[0].realservers[0].address", "192.0.2.3", "services[0].realservers[0].address",
     "is the address of directors[1] (lb2)"),
    ("directors[1].address", "192.0.2.2/24", "directors[1].address", "already used by"),
    # ZooKeeper: a root ZooKeeper takes, hosts without a chroot
    ("zookeeper.root", "/lvsctl/../x", "zookeeper.root", "has a '..' segment"),
    ("zookeeper.root", "/lvsctl/./x", "zookeeper.root", "has a '.' segment"),
    ("zookeeper.root", "/lvsctl//x", "zookeeper.root", "has an empty segment"),
    ("zookeeper.root", "/lvsctl/", "zookeeper.root", "has an empty segment"),
    ("zookeeper.root", "/zookeeper/lvsctl", "zookeeper.root", "reserves for itself"),
    ("zookeeper.root", "/lvsctl\n", "zookeeper.root", "may hold only letters"),
    ("zookeeper.root", "/" + "a" * 600, "zookeeper.root", "at most 512"),
    ("zookeeper.hosts[0]", "zk1:2181/lvsctl", "zookeeper.hosts[0]",
     "carries a path ('/...'): give host:port only; the znode root is zookeeper.root"),
    ("zookeeper.hosts[0]", "zk1,evil:2181", "zookeeper.hosts[0]", "not a host name or address"),
    ("zookeeper.hosts[0]", "zk1:2181\n", "zookeeper.hosts[0]", "not host:port"),
    ("zookeeper.hosts[0]", "zk1:\u00b2", "zookeeper.hosts[0]", "not host:port"),
    ("zookeeper.hosts[0]", "[zk1]:2181", "zookeeper.hosts[0]", "not an IPv6 address"),
]


@pytest.mark.parametrize(("path", "value", "where", "words"), BAD,
                         ids=[f"{b[0]}={b[1]!r}" for b in BAD])
def test_a_value_the_consumer_refuses_is_one_line_naming_its_key(
        path: str, value: Any, where: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cluster(yaml.safe_dump(mutate(MINIMAL, path, value)), "c.yaml")
    lines = info.value.lines()
    assert any(line.startswith(f"c.yaml: {where}: ") and words in line for line in lines), lines
    assert all("\n" not in line for line in lines)


GOOD = [
    ("vips[0].interface", "ééééééé"),  # 14 bytes
    ("vips[0].interface", "x" * 15),
    ("vips[0].interface", "bond0.100"),
    ("zookeeper.root", "/lvsctl/prod-1"),
    ("zookeeper.hosts[0]", "[2001:db8::5]:2181"),
    ("zookeeper.hosts[0]", "zk-1.example.org:2181"),
]


@pytest.mark.parametrize(("path", "value"), GOOD, ids=[f"{g[0]}={g[1]!r}" for g in GOOD])
def test_values_the_consumer_takes_pass(path: str, value: Any) -> None:
    parse_cluster(yaml.safe_dump(mutate(MINIMAL, path, value)), "c.yaml")


def _kernel_dev_valid_name(name: str) -> bool:
    """net/core/dev.c dev_valid_name(), over the UTF-8 bytes, plus lvsctl's no control bytes."""
    raw = name.encode("utf-8", "surrogatepass")
    if not raw or len(raw) >= 16 or raw in (b".", b".."):
        return False
    kernel_space = {0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0xA0}
    return not any(b in b"/:" or b in kernel_space or b < 0x20 or b == 0x7F for b in raw)


@given(st.text(max_size=20) | st.text(alphabet="eth0./: \n\xa0é", max_size=17))
def test_interface_rule_is_the_kernels(name: str) -> None:
    assert (schema.ifname_problem(name) is None) == _kernel_dev_valid_name(name)
    try:
        TypeAdapter(schema.IfName).validate_python(name)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == _kernel_dev_valid_name(name)


@given(st.text(alphabet="/.a-z\n", max_size=12))
def test_root_rule_takes_only_plain_paths(root: str) -> None:
    try:
        TypeAdapter(schema.ZnodeRoot).validate_python(root)
    except ValidationError:
        return
    segments = root.split("/")
    assert segments[0] == "" and all(s not in ("", ".", "..") for s in segments[1:])
    assert "\n" not in root and segments[1] != "zookeeper"


@pytest.mark.parametrize("name", ["eth0\n", "eth0\r", "eth*", "é"])
def test_rendered_interface_names_are_whole_string_matches(name: str) -> None:
    with pytest.raises(SetupError, match="--interface"):
        check_interface(name)


@pytest.mark.parametrize("name", ["web1\n", "web1\nrm -rf /", "-web"])
def test_rendered_server_names_are_whole_string_matches(name: str) -> None:
    with pytest.raises(SetupError, match="--server"):
        check_name(name)


# -- the files themselves: regular, bounded, aliases bounded --------------------------------


def test_a_file_past_the_size_limit_is_refused_with_its_size_and_the_limit(
        tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (config_module.MAX_FILE_BYTES + 1))
    with pytest.raises(ConfigError) as info:
        load_cluster(big)
    assert info.value.lines() == [
        f"{big}: is {config_module.MAX_FILE_BYTES + 1} bytes, more than the limit of "
        f"{config_module.MAX_FILE_BYTES}"]


def test_a_fifo_or_directory_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "cluster.yaml"
    os.mkfifo(fifo)  # nobody writes: a plain open() would wait for ever
    with pytest.raises(ConfigError) as info:
        load_node(fifo)
    assert info.value.lines() == [f"{fifo}: is not a regular file"]
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_cluster(tmp_path)


def test_a_socket_and_a_missing_file_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(ConfigError, match=r"cannot read the file|not a regular file"):
            read_file_text(path)
    with pytest.raises(ConfigError) as info:
        read_file_text(tmp_path / "nope.yaml")
    assert info.value.lines() == [f"{tmp_path / 'nope.yaml'}: cannot read the file: "
                                  "No such file or directory"]


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"cluster: t\n\xff\n")
    with pytest.raises(ConfigError) as info:
        load_cluster(path)
    assert info.value.lines() == [f"{path}: is not UTF-8 text (byte 11)"]


def _alias_bomb(levels: int) -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_built() -> None:
    with pytest.raises(ConfigError) as info:
        parse_yaml(_alias_bomb(9), "bomb.yaml")  # 10**9 strings once expanded
    assert info.value.lines() == [
        f"bomb.yaml: invalid YAML: more than {config_module.MAX_YAML_NODES} values once its "
        "aliases are expanded"]


def test_an_alias_to_itself_and_deep_nesting_are_refused() -> None:
    with pytest.raises(ConfigError, match="nested more than 32 levels deep"):
        parse_yaml("a: &a [*a]\n", "self.yaml")
    with pytest.raises(ConfigError, match="nested more than 32 levels deep"):
        parse_yaml("a: " + "[" * 40 + "]" * 40 + "\n", "deep.yaml")
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_yaml("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "deeper.yaml")


def test_anchors_that_real_files_use_still_work() -> None:
    doc = yaml.safe_dump(MINIMAL)
    text = (doc.replace("services:\n", "x-check: &check {type: http, path: /health, interval: 2,"
                                       " timeout: 1}\nservices:\n", 1))
    data = parse_yaml(text, "c.yaml")
    assert data["x-check"]["path"] == "/health"
    merged = parse_yaml("base: &b {interval: 2}\nuse: {<<: *b, timeout: 1}\n", "m.yaml")
    assert merged["use"] == {"interval": 2, "timeout": 1}


@pytest.mark.parametrize(("model", "values"), [
    (schema.HttpCheckFile, {"type": "http", "path": "/health\n"}),
    (schema.HttpCheckFile, {"type": "http", "host": "www.example.org\n"}),
    (schema.HttpCheckFile, {"type": "https", "sni": "www.example.org\n"}),
    (schema.HttpCheckFile, {"type": "http", "digest": "md5:" + "0" * 32 + "\n"}),
    (schema.DnsCheckFile, {"type": "dns", "name": "example.org.\n"}),
    (schema.SmtpCheckFile, {"type": "smtp", "helo_name": "lb1\n"}),
])
def test_every_pattern_refuses_a_trailing_newline(model: Any, values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="string_pattern_mismatch"):
        model.model_validate(values)
    model.model_validate({k: v.rstrip("\n") for k, v in values.items()})


def test_a_huge_value_makes_a_short_line() -> None:
    text = yaml.safe_dump(mutate(MINIMAL, "vips[0].interface", "x" * 1_000_000))
    with pytest.raises(ConfigError) as info:
        parse_cluster(text, "c.yaml")
    (line,) = info.value.lines()
    assert line.startswith("c.yaml: vips[0].interface: 'xxxx")
    assert line.endswith(" more characters)") and len(line) < 400


def test_no_more_vips_than_the_keeper_takes() -> None:
    from lvsctl.director.channel import MAX_VIPS

    def with_vips(count: int) -> str:
        doc = mutate(MINIMAL, "vips", [*MINIMAL["vips"], *(
            {"address": f"172.20.{i // 250}.{i % 250 + 1}", "interface": "eth0"}
            for i in range(count - len(MINIMAL["vips"])))])
        return yaml.safe_dump(doc)

    assert len(parse_cluster(with_vips(MAX_VIPS), "c.yaml").cluster.vips) == MAX_VIPS
    with pytest.raises(ConfigError) as info:
        parse_cluster(with_vips(MAX_VIPS + 1), "c.yaml")
    assert info.value.lines() == [f"c.yaml: vips: takes at most {MAX_VIPS} item(s)"]
