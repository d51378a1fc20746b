"""Real-server setups used by several test tiers: the golden cases and a cluster to derive them."""

from __future__ import annotations

import copy
from typing import Any

from lvsctl.config import parse_cluster
from lvsctl.model import Cluster
from templates.render import RealServerSetup, setup_adhoc, setup_for
from tests.conftest import MINIMAL


def dr_and_tun_cluster() -> Cluster:
    """MINIMAL plus a tun service on a second VIP that web1 is also in."""
    data: dict[str, Any] = copy.deepcopy(MINIMAL)
    data["vips"].append({"address": "192.0.2.11", "interface": "eth0"})
    data["services"].append(
        {"name": "mail", "vip": "192.0.2.11", "port": 25, "forwarding": "tun",
         "realservers": [{"name": "web1", "address": "192.0.2.21"}]}
    )
    import yaml

    return parse_cluster(yaml.safe_dump(data), "dr-tun.yaml").cluster


# name -> setup; every mode x family, and one combined server with a dotted interface name.
GOLDEN_CASES: dict[str, RealServerSetup] = {
    "dr-ipv4": setup_adhoc("dr", ["192.0.2.10", "192.0.2.11"]),
    "dr-ipv6": setup_adhoc("dr", ["2001:db8::10"]),
    "tun-ipv4": setup_adhoc("tun", ["192.0.2.10"], interface="ens3"),
    "tun-ipv6": setup_adhoc("tun", ["2001:db8::10", "2001:db8::11"]),
    "nat-ipv4": setup_adhoc("nat", [], gateway="10.0.1.1"),
    "nat-ipv6": setup_adhoc("nat", [], gateway="fd00:1::1"),
    "dr-tun-ipv4": setup_for(dr_and_tun_cluster(), "web1", interface="eth0.100"),
}
