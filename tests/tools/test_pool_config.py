"""The pool node's TOML: what a multi-node pool needs, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.pool.config import from_dict
from tools.pool.errors import ConfigError
from tools.pool.node import PoolNode


def test_a_node_can_leave_dhcp_to_another(tmp_path: Path) -> None:
    cfg = from_dict({"pool": {"state_dir": str(tmp_path), "serve_dhcp": False}, "ports": dict.fromkeys(
        ("dhcp", "sntp", "http", "https", "sip"), 0)})  # fmt: skip
    assert cfg.serve_dhcp is False
    with PoolNode(cfg) as node:
        assert node.dhcp is None and node.ports.dhcp is None
        assert node.ports.https and node.ports.sip  # the rest of the node serves as usual


@pytest.mark.parametrize("value", ["no", 0, 1])
def test_serve_dhcp_must_be_a_boolean(value: object, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[pool\]: serve_dhcp must be bool, got ") as err:
        from_dict({"pool": {"state_dir": str(tmp_path), "serve_dhcp": value}})
    assert "\n" not in str(err.value)
