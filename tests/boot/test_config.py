"""boot.config: agent.toml — every mistake one line naming file, section and key; the PIN never shown."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import fields
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import certs
from boot import config
from boot.config import AgentConfig, ConfigError, NetworkSettings, PhoneSettings, RetrySettings, load

EXAMPLE = Path(__file__).resolve().parents[2] / "boot" / "agent.example.toml"
PIN = "80613"
PHONE = {"username": '"+14255550123"', "pin": f'"{PIN}"'}
NETWORK = {"interface": '"eth0"'}


def doc(
    phone: dict[str, str | None] | None = None, network: dict[str, str | None] | None = None, tail: str = ""
) -> str:
    """A minimal valid agent.toml, keys overridden (raw TOML values; None drops a key), tables appended."""
    lines = ["[phone]"]
    lines += [f"{k} = {v}" for k, v in {**PHONE, **(phone or {})}.items() if v is not None]
    lines += ["[network]"]
    lines += [f"{k} = {v}" for k, v in {**NETWORK, **(network or {})}.items() if v is not None]
    return "\n".join(lines) + "\n" + tail


def write(directory: Path, text: str, mode: int = 0o600, name: str = "agent.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def error_of(directory: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    path = write(directory, text)
    with pytest.raises(ConfigError) as info:
        load(path, environ=environ or {})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:")
    assert PIN not in message
    return info.value


# --- the example ---------------------------------------------------------------------------------------


def test_example_loads_cleanly_as_shipped(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    shutil.copy(EXAMPLE, path)
    path.chmod(0o644)  # the example needs no secret in it: the PIN lives in pin_file
    write(tmp_path, PIN + "\n", name="pin")
    cfg = load(path, environ={})
    assert cfg.phone.pin == PIN and cfg.phone.pin_source == f"pin_file {tmp_path / 'pin'}"
    assert cfg.network.interface == "eth0"
    defaults = AgentConfig(path=path, phone=cfg.phone, network=NetworkSettings(interface="eth0"))
    assert cfg == defaults  # the example's active lines are the defaults


def documented_keys() -> set[str]:
    phone = {f.name for f in fields(PhoneSettings)} - {"pin_source"} | {"pin_file", "pin_env"}
    network = {f.name for f in fields(NetworkSettings)}
    retry = {f.name for f in fields(RetrySettings)}
    return phone | network | retry | {"extra_roots_dirs", "margin_hours", "listen", "json_path"}


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for key in documented_keys():
        assert re.search(rf"^#? ?{key} = ", text, re.MULTILINE) or key == "hosts", key
    assert "[network.hosts]" in text
    for section in ("phone", "network", "trust", "retry", "renewal", "status", "log"):
        assert f"[{section}]" in text


def test_every_commented_option_in_the_example_is_valid(tmp_path: Path) -> None:
    """Uncomment each '# key = value' line on its own (dropping what it replaces) and load."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    write(tmp_path, PIN, name="pin")
    options = [i for i, line in enumerate(lines) if re.match(r"^# ?[\"a-z_.]+ = ", line)]
    assert len(options) >= 8
    exclusive = {"pin": "pin_file", "pin_env": "pin_file", "dhcp_server": "interface"}
    for i in options:
        trial = list(lines)
        trial[i] = lines[i].lstrip("# ")
        key = trial[i].split(" = ")[0]
        if key in exclusive:
            trial = [line for line in trial if not line.startswith(f"{exclusive[key]} = ")]
        cfg = load(write(tmp_path, "\n".join(trial)), environ={"PHONEPROV_PIN": PIN})
        assert cfg.phone.pin == PIN, key


# --- mapping to the agent ------------------------------------------------------------------------------


def test_phone_config_on_an_interface(tmp_path: Path) -> None:
    text = doc(
        phone={"sip_uri": '"sip:alice@lab.test"', "key_bits": "3072"},
        network={
            "vlan": "true",
            "ntp_port": "1123",
            "ntp_fallback": '["ntp.lab.test", "192.0.2.9"]',
            "set_system_clock": "false",
            "anon_http_port": "8080",
            "registrar_port": "5062",
        },
        tail='[network.hosts]\n"Pool.Lab.Test" = "192.0.2.1"\n',
    )
    cfg = load(write(tmp_path, text), environ={})
    pc = cfg.phone_config("{DEVICE}")
    assert (pc.username, pc.pin, pc.device_id) == ("+14255550123", PIN, "{DEVICE}")
    assert pc.sip_uri == "sip:alice@lab.test"
    assert pc.discovery.interface == "eth0" and pc.discovery.vlan is True
    assert pc.discovery.server == ("255.255.255.255", 67) and pc.discovery.bind == ("0.0.0.0", 68)
    assert pc.discovery.registrar_port == 5062 and pc.registrar_port == 5062
    assert pc.discovery.certprov_url is None and pc.discovery.registrar_fqdn is None
    assert (pc.time.port, pc.time.fallback) == (1123, ("ntp.lab.test", "192.0.2.9"))
    assert pc.time.set_system_clock is False
    assert pc.anon_http_port == 8080 and pc.key_bits == 3072
    assert dict(pc.hosts) == {"pool.lab.test": "192.0.2.1"}
    assert PIN not in repr(pc) and PIN not in repr(cfg) and PIN not in str(cfg)


def test_phone_config_for_a_lab_dhcp_server_and_overrides(tmp_path: Path) -> None:
    url = "https://pool.lab.test:4443/CertProv/CertProvisioningService.svc"
    text = doc(
        network={
            "interface": None,
            "dhcp_server": '"127.0.0.1:10067"',
            "certprov_url": f'"{url}"',
            "registrar_fqdn": '"pool.lab.test"',
        }
    )
    pc = load(write(tmp_path, text), environ={}).phone_config("dev")
    d = pc.discovery
    assert d.interface is None and d.server == ("127.0.0.1", 10067) and d.bind == ("0.0.0.0", 0)
    assert d.ciaddr == IPv4Address("127.0.0.1")
    assert (d.certprov_url, d.registrar_fqdn, d.registrar_port) == (url, "pool.lab.test", None)
    assert pc.registrar_port == 5061 and pc.time.set_system_clock is True
    off_host = doc(network={"interface": None, "dhcp_server": '"192.0.2.1"'})
    d = load(write(tmp_path, off_host), environ={}).phone_config("dev").discovery
    assert d.server == ("192.0.2.1", 67) and d.ciaddr is None


def test_overrides_alone_need_no_interface(tmp_path: Path) -> None:
    text = doc(
        network={
            "interface": None,
            "certprov_url": '"https://pool.lab.test/CertProv/CertProvisioningService.svc"',
            "registrar_fqdn": '"pool.lab.test"',
        }
    )
    cfg = load(write(tmp_path, text), environ={})
    assert cfg.network.interface is None and cfg.network.dhcp_server is None


@pytest.mark.parametrize("device_id", ["", "   ", "a\nb"])
def test_phone_config_refuses_a_bad_device_id(tmp_path: Path, device_id: str) -> None:
    cfg = load(write(tmp_path, doc()), environ={})
    with pytest.raises(ValueError, match="device_id"):
        cfg.phone_config(device_id)


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    text = doc(
        phone={"state_dir": '"state"'},
        tail='[trust]\nextra_roots_dirs = ["roots", "/srv/roots"]\n[log]\njson_path = "agent.jsonl"\n'
        '[status]\nlisten = ""\n[renewal]\nmargin_hours = 2\n',
    )
    cfg = load(write(tmp_path, text), environ={})
    assert cfg.phone.state_dir == tmp_path / "state"
    assert cfg.extra_roots_dirs == (tmp_path / "roots", Path("/srv/roots"))
    assert cfg.log_json_path == tmp_path / "agent.jsonl"
    assert cfg.status_listen is None
    assert cfg.renewal_margin.total_seconds() == 7200
    plain = load(write(tmp_path, doc()), environ={})
    assert plain.phone.state_dir == Path("/var/lib/phoneprov") and plain.phone.key_bits == 2048
    assert plain.extra_roots_dirs == (Path("/etc/phoneprov/roots"),)
    assert plain.status_listen == ("127.0.0.1", 8765) and plain.log_json_path is None
    assert plain.retry == RetrySettings() and plain.renewal_margin_hours == 24.0


def test_anchor_files_include_extra_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("")
    monkeypatch.setattr(certs, "BUILD_BUNDLE", bundle)
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "lab.pem").write_text("")
    text = doc(tail='[trust]\nextra_roots_dirs = ["roots", "missing"]\n')
    files = load(write(tmp_path, text), environ={}).anchor_files()
    assert files[0] == bundle and files[-1] == roots / "lab.pem"


# --- the PIN -------------------------------------------------------------------------------------------


def test_pin_from_a_0600_or_stricter_file(tmp_path: Path) -> None:
    for mode in (0o600, 0o400):
        pin_file = write(tmp_path, f"  {PIN}\r\n", mode=mode, name=f"pin{mode:o}")
        cfg = load(write(tmp_path, doc(phone={"pin": None, "pin_file": f'"{pin_file}"'})), environ={})
        assert cfg.phone.pin == PIN and cfg.phone.pin_source == f"pin_file {pin_file}"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_pin_file_looser_than_0600_is_refused(tmp_path: Path, mode: int) -> None:
    write(tmp_path, PIN, mode=mode, name="pin")
    err = error_of(tmp_path, doc(phone={"pin": None, "pin_file": '"pin"'}))
    assert (err.section, err.key) == ("phone", "pin_file")
    assert f"{mode:04o}" in str(err) and "0600" in str(err)


def test_pin_file_unreadable_or_not_a_file(tmp_path: Path) -> None:
    err = error_of(tmp_path, doc(phone={"pin": None, "pin_file": '"nope"'}))
    assert err.key == "pin_file" and "cannot read" in str(err) and str(tmp_path / "nope") in str(err)
    (tmp_path / "dir").mkdir(mode=0o700)
    err = error_of(tmp_path, doc(phone={"pin": None, "pin_file": '"dir"'}))
    assert err.key == "pin_file" and "not a regular file" in str(err)
    write(tmp_path, "1" * 300, name="big")
    assert "larger" in str(error_of(tmp_path, doc(phone={"pin": None, "pin_file": '"big"'})))


def test_pin_from_the_environment(tmp_path: Path) -> None:
    text = doc(phone={"pin": None, "pin_env": '"PHONEPROV_PIN"'})
    cfg = load(write(tmp_path, text), environ={"PHONEPROV_PIN": PIN})
    assert cfg.phone.pin == PIN and cfg.phone.pin_source == "pin_env PHONEPROV_PIN"
    err = error_of(tmp_path, text, environ={"OTHER": "1"})
    assert err.key == "pin_env" and "PHONEPROV_PIN is not set" in str(err)
    err = error_of(tmp_path, doc(phone={"pin": None, "pin_env": '"1BAD-NAME"'}))
    assert err.key == "pin_env" and "environment variable name" in str(err)


@pytest.mark.parametrize(
    "phone, key, fragment",
    [
        ({"pin": None}, "pin", "exactly one of pin, pin_file, pin_env"),
        ({"pin_env": '"X"'}, "pin_env", "found pin, pin_env"),
        ({"pin_file": '"f"', "pin_env": '"X"'}, "pin_env", "found pin, pin_file, pin_env"),
    ],
)
def test_exactly_one_pin_source(
    tmp_path: Path, phone: dict[str, str | None], key: str, fragment: str
) -> None:
    err = error_of(tmp_path, doc(phone=phone))
    assert (err.section, err.key) == ("phone", key) and fragment in str(err)


@pytest.mark.parametrize("bad", ["8061x", "12a45", "١٢٣٤٥", "123", "1" * 25, "", "12 345"])
def test_pin_must_be_digits_and_is_never_shown(tmp_path: Path, bad: str) -> None:
    cases: tuple[tuple[dict[str, str | None], dict[str, str]], ...] = (
        ({"pin": f'"{bad}"'}, {}),
        ({"pin": None, "pin_env": '"P"'}, {"P": bad}),
        ({"pin": None, "pin_file": '"pinfile"'}, {}),
    )
    for phone, environ in cases:
        write(tmp_path, bad, name="pinfile")
        err = error_of(tmp_path, doc(phone=phone), environ=environ)
        assert "4 to 24 digits" in str(err) and "value not shown" in str(err)
        assert bad.strip() == "" or bad not in str(err)


def test_pin_as_a_number_is_refused_without_echo(tmp_path: Path) -> None:
    err = error_of(tmp_path, doc(phone={"pin": PIN}))
    assert err.key == "pin" and "digits" in str(err)


def test_inline_pin_needs_a_private_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, doc(), mode=0o644)
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert (info.value.section, info.value.key) == ("phone", "pin") and "0644" in str(info.value)
    assert PIN not in str(info.value)
    load(write(tmp_path, doc(phone={"pin": None, "pin_env": '"P"'}), mode=0o644), environ={"P": PIN})


# --- one line per mistake ------------------------------------------------------------------------------

MISTAKES = [
    # (phone overrides, network overrides, tail, section, key, fragment)
    ({"username": None}, {}, "", "phone", "username", "required"),
    ({"username": '"alice"'}, {}, "", "phone", "username", "phone number"),
    ({"username": "14255550123"}, {}, "", "phone", "username", "14255550123"),
    ({"sip_uri": '"alice@lab.test"'}, {}, "", "phone", "sip_uri", "sip:user@domain"),
    ({"key_bits": "1024"}, {}, "", "phone", "key_bits", "2048..4096"),
    ({"key_bits": "2500"}, {}, "", "phone", "key_bits", "2048, 3072 or 4096"),
    ({"key_bits": "true"}, {}, "", "phone", "key_bits", "whole number"),
    ({"state_dir": '""'}, {}, "", "phone", "state_dir", "path"),
    ({"colour": '"red"'}, {}, "", "phone", "colour", "unknown key"),
    ({}, {"interface": None}, "", "network", "interface", "required"),
    ({}, {"interface": '"eth/0"'}, "", "network", "interface", "interface name"),
    ({}, {"interface": '"averyveryverylongname"'}, "", "network", "interface", "interface name"),
    ({}, {"dhcp_server": '"192.0.2.1"'}, "", "network", "dhcp_server", "not both"),
    ({}, {"interface": None, "dhcp_server": '"pool.lab.test"'}, "", "network", "dhcp_server", "IPv4"),
    ({}, {"interface": None, "dhcp_server": '"192.0.2.1:0"'}, "", "network", "dhcp_server", "1..65535"),
    ({}, {"interface": None, "dhcp_server": '"192.0.2.1:99999"'}, "", "network", "dhcp_server", "1..65535"),
    ({}, {"interface": None, "dhcp_server": '"192.0.2.1:６７"'}, "", "network", "dhcp_server", "ADDR"),
    ({}, {"certprov_url": '"http://pool.lab.test/x"'}, "", "network", "certprov_url", "https://"),
    ({}, {"certprov_url": '"https://pool:bad/x"'}, "", "network", "certprov_url", "https://"),
    ({}, {"registrar_fqdn": '"pool_lab"'}, "", "network", "registrar_fqdn", "DNS name"),
    ({}, {"registrar_port": "0"}, "", "network", "registrar_port", "1..65535"),
    ({}, {"vlan": '"yes"'}, "", "network", "vlan", "true or false"),
    ({}, {"anon_http_port": "70000"}, "", "network", "anon_http_port", "1..65535"),
    ({}, {"ntp_port": "1.5"}, "", "network", "ntp_port", "whole number"),
    ({}, {"ntp_fallback": '"time.windows.com"'}, "", "network", "ntp_fallback", "list"),
    ({}, {"ntp_fallback": '["bad name"]'}, "", "network", "ntp_fallback", "host name"),
    ({}, {"set_system_clock": "1"}, "", "network", "set_system_clock", "true or false"),
    ({}, {"hosts": '"pool=1.2.3.4"'}, "", "network", "hosts", "table"),
    ({}, {}, '[network.hosts]\n"pool.lab.test" = "1.2.3"\n', "network", "hosts.pool.lab.test", "IPv4"),
    ({}, {}, '[network.hosts]\n"-bad-" = "192.0.2.1"\n', "network", "hosts.-bad-", "DNS name"),
    ({}, {}, "[trust]\nextra_roots_dirs = '/etc/roots'\n", "trust", "extra_roots_dirs", "list"),
    ({}, {}, "[trust]\nroots = []\n", "trust", "roots", "unknown key"),
    ({}, {}, "[retry]\nbase_s = 0\n", "retry", "base_s", ">= 0.001"),
    ({}, {}, "[retry]\nbase_s = nan\n", "retry", "base_s", "finite number"),
    ({}, {}, "[retry]\ncap_s = inf\n", "retry", "cap_s", "finite number"),
    ({}, {}, "[retry]\nbase_s = 10\ncap_s = 5\n", "retry", "cap_s", "at least base_s"),
    ({}, {}, "[retry]\nbudget_s = -1\n", "retry", "budget_s", ">= 0"),
    ({}, {}, "[retry]\nmax_attempts = 2.5\n", "retry", "max_attempts", "whole number"),
    ({}, {}, '[retry]\nrig_power_cycle_url = "ftp://rig/x"\n', "retry", "rig_power_cycle_url", "http(s)"),
    ({}, {}, "[renewal]\nmargin_hours = -1\n", "renewal", "margin_hours", "0..8760"),
    ({}, {}, "[renewal]\nmargin_hours = '24'\n", "renewal", "margin_hours", "number"),
    ({}, {}, '[status]\nlisten = "localhost:8765"\n', "status", "listen", "IPv4"),
    ({}, {}, '[status]\nlisten = "127.0.0.1"\n', "status", "listen", "ADDR:PORT"),
    ({}, {}, "[status]\nlisten = 8765\n", "status", "listen", "string"),
    ({}, {}, "[log]\njson_path = 1\n", "log", "json_path", "string"),
    ({}, {}, "[log]\nlevel = 'debug'\n", "log", "level", "unknown key"),
    ({}, {}, "[phones]\n", "phones", None, "unknown section"),
]


@pytest.mark.parametrize("phone, network, tail, section, key, fragment", MISTAKES)
def test_each_mistake_is_one_line_naming_file_section_and_key(
    tmp_path: Path,
    phone: dict[str, str | None],
    network: dict[str, str | None],
    tail: str,
    section: str,
    key: str | None,
    fragment: str,
) -> None:
    err = error_of(tmp_path, doc(phone=phone, network=network, tail=tail))
    assert isinstance(err, ValueError)
    assert (err.section, err.key) == (section, key)
    prefix = f"{tmp_path / 'agent.toml'}: [{section}]" + (f" {key}:" if key else ":")
    assert str(err).startswith(prefix), str(err)
    assert fragment in str(err), str(err)


def test_file_level_mistakes(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent.toml: cannot read"):
        load(missing)
    err = error_of(tmp_path, "[phone\nusername = 1\n")
    assert "invalid TOML" in str(err) and err.section is None
    path = tmp_path / "agent.toml"
    path.write_bytes(b"[phone]\nusername = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load(path)
    err = error_of(tmp_path, "[network]\ninterface = 'eth0'\n")
    assert err.section == "phone" and "missing" in str(err)
    with pytest.raises(ConfigError, match=r"^agent.toml: \[status\]: must be a table$"):
        config.from_dict({"phone": {"username": "1", "pin": PIN}, "status": 1}, where="agent.toml")


# --- properties ----------------------------------------------------------------------------------------

PLAUSIBLE: list[object] = [
    "eth0",
    "192.0.2.1:67",
    "https://pool.lab.test/x",
    "pool.lab.test",
    "sip:a@lab.test",
    "",
    "x",
]
PLAUSIBLE += [5061, 2048, 0, 24.0, True, False, ["time.lab.test"], "127.0.0.1:8765", "/var/lib/phoneprov"]
toml_values = st.recursive(
    st.sampled_from(PLAUSIBLE) | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
known_keys = st.sampled_from(sorted(documented_keys() | {"username"}))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["phone", "network", "trust", "retry", "renewal", "status", "log", "other"]),
        st.dictionaries(known_keys | st.text(max_size=8), toml_values, max_size=4),
        max_size=7,
    )
)
def test_any_document_is_a_config_or_a_config_error(changes: dict[str, dict[str, object]]) -> None:
    """A valid document with arbitrary keys and values merged in (the PIN stays in its own key)."""
    data: dict[str, dict[str, object]] = {
        "phone": {"username": "+14255550123"},
        "network": {"interface": "eth0"},
    }
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    phone = data["phone"]
    for key in list(phone):
        if key.startswith("pin") or PIN in key or PIN in repr(phone[key]):
            del phone[key]
    phone["pin"] = PIN
    try:
        cfg = config.from_dict(data, where="agent.toml", base=Path("/etc/phoneprov"), environ={})
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("agent.toml: [")
        assert PIN not in str(exc)
    else:
        assert cfg.phone.pin == PIN and PIN not in repr(cfg)
        assert cfg.phone_config("dev").pin == PIN


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_a_config_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "agent.toml"
    path.write_bytes(raw)
    os.chmod(path, 0o600)
    try:
        load(path, environ={})
    except ConfigError as exc:
        assert "\n" not in str(exc)
