"""How the phone is installed and run: boot/install.mk, the systemd units, the gadget script, udev rules."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.servers import binary

REPO = Path(__file__).resolve().parents[2]
BOOT = REPO / "boot"
GADGET_SH = BOOT / "usb-gadget.sh"
INSTALLED = {  # path under DESTDIR → mode
    "etc/systemd/system/phoneprov.service": 0o644,
    "etc/systemd/system/usb-gadget.service": 0o644,
    "etc/udev/rules.d/99-phoneprov.rules": 0o644,
    "etc/phoneprov/agent.toml.example": 0o644,
    "opt/phoneprov/bin/usb-gadget.sh": 0o755,
    "usr/lib/sysusers.d/phoneprov.conf": 0o644,
}


def make(
    *args: str, makefiles: tuple[str, ...] = ("Makefile", "boot/install.mk")
) -> subprocess.CompletedProcess[str]:
    cmd = ["make", "--no-print-directory", *(a for f in makefiles for a in ("-f", f)), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)


def tree(root: Path) -> dict[str, int]:
    """Every file and symlink under root → its permission bits."""
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode)
        for p in root.rglob("*")
        if p.is_file() or p.is_symlink()
    }


# --- install.mk ----------------------------------------------------------------------------------------


def test_install_then_uninstall_files_only(tmp_path: Path) -> None:
    done = make("install", f"DESTDIR={tmp_path}", "NO_VENV=1")
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path) == INSTALLED
    assert stat.S_IMODE((tmp_path / "etc/phoneprov").stat().st_mode) == 0o755
    assert (tmp_path / "etc/phoneprov/agent.toml.example").read_bytes() == (
        BOOT / "agent.example.toml"
    ).read_bytes()
    unit = (tmp_path / "etc/systemd/system/phoneprov.service").read_text()
    assert unit == (BOOT / "phoneprov.service").read_text()  # the default PREFIX needs no rewriting
    assert not (tmp_path / "opt/phoneprov/.venv").exists()

    done = make("uninstall", f"DESTDIR={tmp_path}")
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path) == {}
    assert not (tmp_path / "opt/phoneprov").exists() and not (tmp_path / "etc/phoneprov").exists()
    assert "Kept:" in done.stdout


def test_the_phones_own_files_survive_install_and_uninstall(tmp_path: Path) -> None:
    conf = tmp_path / "etc/phoneprov"
    conf.mkdir(parents=True)
    (conf / "agent.toml").write_text("# mine\n")
    (conf / "agent.toml").chmod(0o600)
    (conf / "pin").write_text("80613\n")
    state = tmp_path / "var/lib/phoneprov"
    state.mkdir(parents=True)
    (state / "user.key").write_text("key")
    kept = tree(tmp_path)

    assert make("install", f"DESTDIR={tmp_path}", "NO_VENV=1").returncode == 0
    assert (conf / "agent.toml").read_text() == "# mine\n"
    assert tree(tmp_path) == {**kept, **INSTALLED}
    (tmp_path / "opt/phoneprov/.venv/bin").mkdir(parents=True)  # as a full install leaves it
    (tmp_path / "opt/phoneprov/.venv/bin/python").write_text("")

    assert make("uninstall", f"DESTDIR={tmp_path}").returncode == 0
    assert tree(tmp_path) == kept
    assert (conf / "agent.toml").read_text() == "# mine\n" and (state / "user.key").read_text() == "key"
    assert not (tmp_path / "opt/phoneprov").exists()


def test_prefix_is_honoured_in_the_tree_and_the_units(tmp_path: Path) -> None:
    prefix = "/usr/local/phoneprov"
    done = make("install", f"DESTDIR={tmp_path}", f"PREFIX={prefix}", "NO_VENV=1")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "usr/local/phoneprov/bin/usb-gadget.sh").is_file()
    phone = (tmp_path / "etc/systemd/system/phoneprov.service").read_text()
    gadget = (tmp_path / "etc/systemd/system/usb-gadget.service").read_text()
    assert f"ExecStart={prefix}/.venv/bin/phoneprov boot --config /etc/phoneprov/agent.toml" in phone
    assert f"ExecStart={prefix}/bin/usb-gadget.sh start" in gadget
    assert "/opt/phoneprov" not in phone + gadget
    assert make("uninstall", f"DESTDIR={tmp_path}", f"PREFIX={prefix}").returncode == 0
    assert tree(tmp_path) == {}


def test_the_fragment_works_on_its_own(tmp_path: Path) -> None:
    done = make("install", f"DESTDIR={tmp_path}", "NO_VENV=1", makefiles=("boot/install.mk",))
    assert done.returncode == 0, done.stderr
    assert tree(tmp_path) == INSTALLED


def test_the_fragment_never_becomes_the_default_goal() -> None:
    done = make("-n", makefiles=("boot/install.mk", "Makefile"))  # included first, still not the default
    assert done.returncode == 0, done.stderr
    assert "ruff check" in done.stdout and "install -m" not in done.stdout


def test_install_refuses_a_relative_prefix_or_the_source_tree(tmp_path: Path) -> None:
    done = make("install", f"DESTDIR={tmp_path}", "PREFIX=opt/phoneprov", "NO_VENV=1")
    assert done.returncode != 0 and "absolute" in done.stderr
    assert tree(tmp_path) == {}
    src = tmp_path / "src"  # a copy of the sources, so a broken guard could only write inside tmp_path
    shutil.copytree(BOOT, src / "boot")
    for target in ("install", "uninstall"):
        done = make(
            target,
            f"DESTDIR={tmp_path}",
            "PREFIX=/src",
            "NO_VENV=1",
            makefiles=(str(src / "boot/install.mk"),),
        )
        assert done.returncode != 0 and "source tree" in done.stderr
    assert not (tmp_path / "etc").exists() and not (src / "bin").exists()


# --- the systemd units ---------------------------------------------------------------------------------


def directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_phoneprov_unit_says_what_the_phone_needs() -> None:
    d = directives(BOOT / "phoneprov.service")
    want = {
        "Type": "notify",
        "ExecStart": "/opt/phoneprov/.venv/bin/phoneprov boot --config /etc/phoneprov/agent.toml",
        "WatchdogSec": "60",
        "Restart": "always",
        "RestartSec": "5",
        "StateDirectory": "phoneprov",
        "StateDirectoryMode": "0700",
        "ConfigurationDirectory": "phoneprov",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes",
    }
    assert {k: d[k] for k in want} == {k: [v] for k, v in want.items()}
    caps = {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SYS_TIME", "CAP_NET_ADMIN"}
    assert set(d["CapabilityBoundingSet"][0].split()) == caps == set(d["AmbientCapabilities"][0].split())
    assert set(d["RestrictAddressFamilies"][0].split()) == {
        "AF_INET",
        "AF_UNIX",
        "AF_NETLINK",
    }  # no raw packets
    assert {"@system-service", "@clock"} <= set(d["SystemCallFilter"][0].split())  # clock_settime is @clock
    assert "ProtectClock" not in d and "PrivateDevices" not in d  # CAP_SYS_TIME, /dev/ttyGS0
    text = (BOOT / "phoneprov.service").read_text()
    for reason in ("port 68", "SO_BINDTODEVICE", "clock", "VLAN"):
        assert reason in text


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    binary("systemd-analyze", "systemd")
    for name in ("phoneprov.service", "usb-gadget.service"):  # ExecStart must exist for verify: point at true
        text = (BOOT / name).read_text()
        text = re.sub(r"(Exec(?:Start|Stop)=)\S+", rf"\1{shutil.which('true')}", text)
        (tmp_path / name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "phoneprov.service", "usb-gadget.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    mine = [line for line in done.stderr.splitlines() if str(tmp_path) in line]
    assert mine == []  # unknown keys and bad values are only warnings: none allowed


def test_an_image_gets_the_service_user_from_sysusers(tmp_path: Path) -> None:
    binary("systemd-sysusers", "systemd")
    assert make("install", f"DESTDIR={tmp_path}", "NO_VENV=1").returncode == 0
    (tmp_path / "etc").mkdir(exist_ok=True)
    done = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(tmp_path / "usr/lib/sysusers.d/phoneprov.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    entry = next(
        line for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("phoneprov:")
    )
    _, _, uid, _, _, home, shell = entry.split(":")
    assert int(uid) < 1000 and home == "/var/lib/phoneprov" and shell == "/usr/sbin/nologin"
    unit = (BOOT / "phoneprov.service").read_text()
    assert "User=phoneprov" in unit and "Group=phoneprov" in unit  # the unit runs as the user sysusers makes


# --- the USB gadget ------------------------------------------------------------------------------------


def test_gadget_script_is_shellcheck_clean() -> None:
    binary("shellcheck", "shellcheck")
    done = subprocess.run(
        ["shellcheck", str(GADGET_SH)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout


def fake_pi(
    root: Path, serial: bytes | None = b"10000000abcdef12\0", udc: str | None = "fe980000.usb"
) -> Path:
    """A temp dir laid out like the /sys and /proc a Pi shows; returns the gadget's directory."""
    (root / "sys/kernel/config/usb_gadget").mkdir(parents=True)
    (root / "sys/class/udc").mkdir(parents=True)
    if udc:
        (root / "sys/class/udc" / udc).mkdir()
    if serial is not None:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/serial-number").write_bytes(serial)
    return root / "sys/kernel/config/usb_gadget/phoneprov"


CONFIGFS_RMDIR = """#!/bin/sh
# configfs's rmdir, for a plain directory tree: a bound gadget is busy; attributes (files) and default
# groups (strings, configs, functions) go with their directory; anything else left inside is an error.
for d in "$@"; do
    if [ -f "$d/UDC" ] && [ -n "$(tr -d '\\n' <"$d/UDC")" ]; then echo "rmdir: $d: busy" >&2; exit 1; fi
    find "$d" -maxdepth 1 -type f -delete
    for group in strings configs functions; do
        if [ -d "$d/$group" ]; then REAL "$d/$group" || exit 1; fi
    done
    REAL "$d" || exit 1
done
"""


def gadget(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run usb-gadget.sh against the fake Pi under root, with configfs's rmdir semantics."""
    shim = root / "shim-bin" / "rmdir"
    if not shim.exists():
        shim.parent.mkdir(parents=True)
        shim.write_text(CONFIGFS_RMDIR.replace("REAL", shutil.which("rmdir") or "/bin/rmdir"))
        shim.chmod(0o755)
    env = {**os.environ, "PHONEPROV_GADGET_ROOT": str(root), "PATH": f"{shim.parent}:{os.environ['PATH']}"}
    for key in (
        "PHONEPROV_USB_VID",
        "PHONEPROV_USB_PID",
        "PHONEPROV_USB_MANUFACTURER",
        "PHONEPROV_USB_PRODUCT",
    ):
        env.pop(key, None)
    return subprocess.run(["sh", str(GADGET_SH), *args], env=env, capture_output=True, text=True, timeout=10)


def attrs(g: Path) -> dict[str, str]:
    return {str(p.relative_to(g)): p.read_text().rstrip("\n") for p in g.rglob("*") if p.is_file()}


def test_gadget_start_builds_the_acm_gadget_as_hal_md_says(tmp_path: Path) -> None:
    g = fake_pi(tmp_path)
    (g / "functions/acm.usb0").mkdir(parents=True)
    (g / "functions/acm.usb0/protocol").write_text("1\n")  # a kernel >= 6.13 has this attribute
    done = gadget(tmp_path, "start")
    assert done.returncode == 0, done.stderr
    assert attrs(g) == {
        "idVendor": "0x1d6b",
        "idProduct": "0x0104",
        "bcdDevice": "0x0100",
        "bcdUSB": "0x0200",
        "strings/0x409/serialnumber": "10000000abcdef12",
        "strings/0x409/manufacturer": "phoneprov",
        "strings/0x409/product": "phoneprov test phone",
        "configs/c.1/strings/0x409/configuration": "CDC ACM",
        "configs/c.1/MaxPower": "250",
        "functions/acm.usb0/protocol": "0",
        "UDC": "fe980000.usb",
    }
    link = g / "configs/c.1/acm.usb0"
    assert link.is_symlink() and link.resolve() == (g / "functions/acm.usb0").resolve()
    assert "serial 10000000abcdef12" in done.stdout

    again = gadget(tmp_path, "start")  # idempotent: a bound gadget is left alone
    assert again.returncode == 0 and "already bound" in again.stdout
    assert attrs(g)["UDC"] == "fe980000.usb" and attrs(g)["idVendor"] == "0x1d6b"
    assert gadget(tmp_path, "status").returncode == 0


def test_gadget_stop_unbinds_then_removes_in_reverse_order(tmp_path: Path) -> None:
    g = fake_pi(tmp_path)
    assert gadget(tmp_path, "start").returncode == 0
    done = gadget(tmp_path, "stop")
    assert done.returncode == 0, done.stderr
    assert not g.exists() and (tmp_path / "sys/kernel/config/usb_gadget").is_dir()
    assert gadget(tmp_path, "stop").returncode == 0  # nothing there: not an error
    assert gadget(tmp_path, "status").returncode == 3
    assert gadget(tmp_path, "start").returncode == 0  # and it comes back
    assert attrs(g)["UDC"] == "fe980000.usb"


def test_the_configfs_twin_refuses_what_configfs_refuses(tmp_path: Path) -> None:
    """The rmdir shim fails on a bound gadget and on a non-empty group, or the stop test proves nothing."""
    g = fake_pi(tmp_path)
    assert gadget(tmp_path, "start").returncode == 0
    env = {**os.environ, "PATH": f"{tmp_path / 'shim-bin'}:{os.environ['PATH']}"}
    for d in (g, g / "configs/c.1"):  # bound; still holds strings/0x409 and the function link
        done = subprocess.run(["rmdir", str(d)], env=env, capture_output=True, timeout=10, check=False)
        assert done.returncode != 0


def test_gadget_serial_falls_back_to_cpuinfo_then_machine_id(tmp_path: Path) -> None:
    g = fake_pi(tmp_path, serial=None)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("Hardware\t: BCM2835\nSerial\t\t: 00000000c0ffee42\nModel : Pi\n")
    assert gadget(tmp_path, "start").returncode == 0
    assert attrs(g)["strings/0x409/serialnumber"] == "00000000c0ffee42"

    other = tmp_path / "other"
    g = fake_pi(other, serial=None)
    (other / "etc").mkdir()
    (other / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert gadget(other, "start").returncode == 0
    assert attrs(g)["strings/0x409/serialnumber"] == "0123456789abcdef"


@pytest.mark.parametrize(
    "serial, udc, message",
    [
        (None, "fe980000.usb", "no serial number"),
        (b"10000000abcdef12\0", None, "no USB device controller"),
    ],
)
def test_gadget_start_fails_clearly(
    tmp_path: Path, serial: bytes | None, udc: str | None, message: str
) -> None:
    fake_pi(tmp_path, serial=serial, udc=udc)
    done = gadget(tmp_path, "start")
    assert done.returncode == 1 and message in done.stderr
    assert "UDC" not in attrs(tmp_path / "sys/kernel/config/usb_gadget/phoneprov") if udc is None else True


def test_gadget_usage(tmp_path: Path) -> None:
    done = gadget(tmp_path, "restart")
    assert done.returncode == 2 and "usage" in done.stderr


# --- udev ----------------------------------------------------------------------------------------------

RULE_KEY = re.compile(r'\s*([A-Z_]+)(?:\{([A-Za-z0-9_]+)\})?\s*(==|!=|\+=|:=|=)\s*"([^"]*)"\s*')
MATCH_KEYS = {"ACTION", "SUBSYSTEM", "KERNEL", "ATTRS", "ATTR", "ENV"}
ASSIGN_KEYS = {"GROUP", "MODE", "SYMLINK", "TAG", "ENV"}


def rules() -> list[dict[str, str]]:
    """Each rule as {"KEY{attr}op": value}; any line that is not well-formed fails the test."""
    parsed = []
    for line in (BOOT / "99-phoneprov.rules").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        rule: dict[str, str] = {}
        for part in line.split(","):
            m = RULE_KEY.fullmatch(part)
            assert m, f"not a udev key: {part!r}"
            key, attr, op, value = m.groups()
            assert key in (MATCH_KEYS if op in ("==", "!=") else ASSIGN_KEYS), part
            rule[f"{key}{{{attr}}}{op}" if attr else f"{key}{op}"] = value
        parsed.append(rule)
    return parsed


def test_udev_rules_phone_side_and_pc_side() -> None:
    phone, pc, modemmanager = rules()
    assert phone["KERNEL=="] == "ttyGS[0-9]*"  # the gadget port on the Pi
    assert (phone["GROUP="], phone["MODE="]) == ("dialout", "0660")
    unit = directives(BOOT / "phoneprov.service")
    assert unit["SupplementaryGroups"] == ["dialout"]  # so the service may open it
    assert pc["KERNEL=="] == "ttyACM[0-9]*" and pc["SYMLINK+="] == "phoneprov/$attr{serial}"
    script = GADGET_SH.read_text()
    for rule in (pc, modemmanager):  # the PC matches what the gadget announces
        assert f"PHONEPROV_USB_VID:-0x{rule['ATTRS{idVendor}==']}" in script
        assert f"PHONEPROV_USB_PID:-0x{rule['ATTRS{idProduct}==']}" in script
        assert f"PHONEPROV_USB_MANUFACTURER:-{rule['ATTRS{manufacturer}==']}" in script
    assert modemmanager["ENV{ID_MM_DEVICE_IGNORE}="] == "1"
    text = (BOOT / "99-phoneprov.rules").read_text()
    assert "ON THE PHONE" in text and "ON THE PC" in text
