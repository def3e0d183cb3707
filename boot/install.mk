# boot/install.mk — put the phone's firmware on a Pi: `sudo make install` / `sudo make uninstall`.
# Included by the Makefile; also usable alone: make -f boot/install.mk install
#
#   DESTDIR           staging root (default: empty, i.e. this machine); with DESTDIR set nothing outside it
#                     is touched (no useradd, systemctl or udevadm)
#   PREFIX            where the program lives (default /opt/phoneprov): PREFIX/.venv, PREFIX/bin
#   NO_VENV=1         install the files only: no venv, no pip (CI, or an image whose venv is built later)
#   INSTALL_PIP_ARGS  extra arguments for pip, e.g. --no-index --find-links=/srv/wheels
#   PYTHON            the interpreter the venv is made from (default python3)
#
# A venv records its absolute path, so a venv built under a DESTDIR runs only once the tree sits at /
# (a chroot or an image root), not from the staging directory.
#
# install writes:  PREFIX/.venv (the project and its dependencies, not editable; Mozilla roots built into it)
#                  PREFIX/bin/usb-gadget.sh                            0755
#                  /etc/systemd/system/{phoneprov,usb-gadget}.service  0644 (paths adjusted to PREFIX)
#                  /etc/udev/rules.d/99-phoneprov.rules                0644
#                  /etc/phoneprov/agent.toml.example                   0644 (in /etc/phoneprov, 0755)
#                  /usr/lib/sysusers.d/phoneprov.conf                  0644 (the user, for systemd-sysusers)
#                  and, on this machine, the system user `phoneprov` (an image gets it from sysusers at boot)
# It never writes /etc/phoneprov/agent.toml; uninstall removes exactly the files above and keeps
# agent.toml, the PIN file, /var/lib/phoneprov (the phone's key and certificate) and the user.

INSTALL_SRC := $(patsubst %/,%,$(dir $(abspath $(dir $(lastword $(MAKEFILE_LIST))))))
INSTALL_PREV_GOAL := $(.DEFAULT_GOAL)

PREFIX ?= /opt/phoneprov
PYTHON ?= python3
INSTALL_PIP_ARGS ?=
NO_VENV ?=

INST_HOME = $(DESTDIR)$(PREFIX)
INST_BIN = $(INST_HOME)/bin
INST_VENV = $(INST_HOME)/.venv
INST_UNITS = $(DESTDIR)/etc/systemd/system
INST_UDEV = $(DESTDIR)/etc/udev/rules.d
INST_CONF = $(DESTDIR)/etc/phoneprov
INST_SYSUSERS = $(DESTDIR)/usr/lib/sysusers.d
INST_UNIT_NAMES = phoneprov.service usb-gadget.service

.PHONY: install uninstall install-check install-files install-venv

# PREFIX must be absolute and must not be this source tree (its .venv is the developer's, not ours).
install-check:
	@case "$(PREFIX)" in /?*) ;; *) echo "install: PREFIX must be an absolute path, got '$(PREFIX)'" >&2; exit 1;; esac
	@if [ "$(abspath $(INST_HOME))" = "$(INSTALL_SRC)" ]; then \
		echo "install: $(INST_HOME) is the source tree; clone it elsewhere or choose another PREFIX" >&2; exit 1; fi

install-files: install-check
	install -d -m 0755 $(INST_BIN) $(INST_UNITS) $(INST_UDEV) $(INST_CONF) $(INST_SYSUSERS)
	install -m 0644 $(INSTALL_SRC)/boot/phoneprov.sysusers $(INST_SYSUSERS)/phoneprov.conf
	install -m 0755 $(INSTALL_SRC)/boot/usb-gadget.sh $(INST_BIN)/usb-gadget.sh
	for unit in $(INST_UNIT_NAMES); do \
		sed 's#/opt/phoneprov/#$(PREFIX)/#g' $(INSTALL_SRC)/boot/$$unit > $(INST_UNITS)/$$unit.tmp && \
		chmod 0644 $(INST_UNITS)/$$unit.tmp && mv $(INST_UNITS)/$$unit.tmp $(INST_UNITS)/$$unit || exit 1; \
	done
	install -m 0644 $(INSTALL_SRC)/boot/99-phoneprov.rules $(INST_UDEV)/99-phoneprov.rules
	install -m 0644 $(INSTALL_SRC)/boot/agent.example.toml $(INST_CONF)/agent.toml.example

install-venv: install-check
	$(PYTHON) -m venv $(INST_VENV)
	$(INST_VENV)/bin/python -m pip install $(INSTALL_PIP_ARGS) $(INSTALL_SRC)
	cd / && $(INST_VENV)/bin/python -m certs.build

install: install-files $(if $(NO_VENV),,install-venv)
	@if [ -z "$(DESTDIR)" ]; then \
		getent passwd phoneprov >/dev/null || useradd --system --user-group --home-dir /var/lib/phoneprov \
			--no-create-home --shell /usr/sbin/nologin phoneprov; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; \
		udevadm control --reload 2>/dev/null || true; \
	fi
	@echo "installed under $(INST_HOME). Next: cp $(INST_CONF)/agent.toml.example $(INST_CONF)/agent.toml," \
		"edit it, write the PIN file (mode 0600, owner phoneprov), then:" \
		"systemctl enable --now usb-gadget.service phoneprov.service"

uninstall: install-check
	@if [ -z "$(DESTDIR)" ]; then systemctl disable --now $(INST_UNIT_NAMES) 2>/dev/null || true; fi
	rm -f $(addprefix $(INST_UNITS)/,$(INST_UNIT_NAMES)) $(INST_UDEV)/99-phoneprov.rules \
		$(INST_CONF)/agent.toml.example $(INST_BIN)/usb-gadget.sh $(INST_SYSUSERS)/phoneprov.conf
	rm -rf $(INST_VENV)
	for dir in $(INST_BIN) $(INST_HOME) $(INST_CONF); do \
		if [ -d $$dir ]; then rmdir --ignore-fail-on-non-empty $$dir || exit 1; fi; \
	done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@if [ -z "$(DESTDIR)" ]; then udevadm control --reload 2>/dev/null || true; fi
	@echo "uninstalled. Kept: $(INST_CONF)/agent.toml and the PIN file (if any)," \
		"$(DESTDIR)/var/lib/phoneprov (the phone's key and certificate) and the phoneprov user;" \
		"remove them by hand to retire the phone."

# Included anywhere in a Makefile, this fragment never becomes its default goal.
.DEFAULT_GOAL := $(INSTALL_PREV_GOAL)
