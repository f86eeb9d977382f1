# gpufleet developer tasks. `make deps test` runs the suite on a bare Debian machine;
# `make deps demo` runs the whole pipeline locally.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Installed as root by `make install`; DESTDIR lets packaging (or a dry run) stage it elsewhere.
DESTDIR ?=

# Debian bookworm packages; the tests and the demo start their own instances on free loopback
# ports (gpufleet/localstack.py), so it does not matter whether Debian also starts its own.
# gcc + libc6-dev: the NVML ABI test compiles a probe against NVIDIA's nvml.h, and pip compiles
# gpufleet/native.c (with python3-dev's headers, installed when the Python in use lacks them).
# fonts-dejavu-core: the fonts the PDF report embeds. chromium, poppler-utils, qpdf: the tests that look
# at the HTML and PDF reports as a person would (a screenshot, a drawn page, a strict syntax check).
# systemd: `systemd-analyze security --offline` rates the shipped units.
APT_PACKAGES := mosquitto influxdb nginx-light gcc libc6-dev chromium poppler-utils qpdf fonts-dejavu-core systemd
# One file of each package: `make deps` runs apt only when one of them is missing.
SYSTEM_FILES := /usr/sbin/mosquitto /usr/bin/influxd /usr/sbin/nginx /usr/bin/gcc /usr/include/stdio.h \
	/usr/bin/chromium /usr/bin/pdftoppm /usr/bin/qpdf /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf /usr/bin/systemd-analyze
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps system-deps test demo install bench clean distclean

deps: system-deps $(VENV)/.installed

# apt only when something is missing, so a second `make deps` needs no network or root.
# Debian's python3 lacks ensurepip (python3-venv) until the venv exists.
system-deps:
	@missing=""; \
	for path in $(SYSTEM_FILES); do [ -e "$$path" ] || missing="$$missing $$path"; done; \
	packages="$(APT_PACKAGES)"; \
	if [ ! -x $(PY) ] && ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
		missing="$$missing ensurepip"; packages="$$packages python3-venv"; \
	fi; \
	if ! $(PYTHON) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
		missing="$$missing Python.h"; packages="$$packages python3-dev"; \
	fi; \
	if [ -n "$$missing" ]; then \
		echo "deps: missing$$missing; installing $$packages"; \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$packages; \
	fi

# The stamp reruns pip only when the package's build changes: pip builds gpufleet/native.c
# (gpufleet._native) in place.
$(VENV)/.installed: pyproject.toml setup.py gpufleet/native.c
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -e '.[test,docs]'
	touch $@

# A shell check, not a file target: with `make deps test` the venv appears during this run.
need_venv = @[ -x $(PY) ] || { echo "no $(VENV) yet: run \`make deps\` first" >&2; exit 1; }

test:
	$(need_venv)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo:
	$(need_venv)
	$(VENV)/bin/gpufleet demo

bench:
	$(need_venv)
	$(PY) bench/pipeline.py
	$(PY) bench/agent_nvml.py

# The application into /opt/gpufleet (its own venv), the `gpufleet` system user, units and
# example configs; existing configs in /etc/gpufleet are never overwritten.
install:
	$(PYTHON) -m venv $(DESTDIR)/opt/gpufleet
	$(DESTDIR)/opt/gpufleet/bin/pip install --disable-pip-version-check --quiet .
	install -m 0644 README.md $(DESTDIR)/opt/gpufleet/README.md
	@if [ -z "$(DESTDIR)" ] && ! id -u gpufleet >/dev/null 2>&1; then \
		useradd --system --home-dir /var/lib/gpufleet --shell /usr/sbin/nologin gpufleet; fi
	install -d $(DESTDIR)/etc/systemd/system $(DESTDIR)/etc/gpufleet
	install -m 0644 systemd/*.service systemd/*.timer $(DESTDIR)/etc/systemd/system/
	@for conf in systemd/*.toml reports/report.example.toml; do \
		name=$$(basename $$conf); name=$${name/.example/}; \
		target=$(DESTDIR)/etc/gpufleet/$$name; \
		if [ -e "$$target" ]; then echo "keeping existing $$target"; \
		else install -m 0644 "$$conf" "$$target" && echo "installed $$target"; fi; \
	done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf build out .pytest_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
