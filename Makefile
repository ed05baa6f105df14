# The README's commands. `make test` and `make run` set up everything they need on a fresh
# Debian 12 machine: Debian packages, a virtual environment, the package with its extras.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STATE ?= $(CURDIR)/state

# Debian packages the stack needs at build, test and run time.
DEB_PACKAGES := build-essential pkg-config python3-dev python3-venv libgmp-dev \
	softhsm2 libsofthsm2 swtpm swtpm-tools tpm2-tools libtss2-dev libtss2-tcti-swtpm0 \
	libsodium-dev \
	pocl-opencl-icd ocl-icd-opencl-dev opencl-headers clinfo \
	chromium chromium-driver systemd

# Debian packages the OS image build and its boot test need; only `make image` and
# `make image-test` install them.
IMAGE_DEB_PACKAGES := mmdebstrap qemu-system-x86 ovmf dosfstools mtools fdisk e2fsprogs \
	swtpm swtpm-tools curl

.PHONY: all deps venv lock test lint run bench gpu-check clean image-deps image image-test \
	reference-venv flower-venv fate-venv

all: test

# Install only what is missing, so a prepared machine pays nothing.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends $$missing; \
	fi

# The venv is installed against requirements.lock, the one source of Python pins for the venv
# and the image. PIP_CONSTRAINT (unlike -c) also reaches the isolated environments in which pip
# builds source distributions (tpm2-pytss needs setuptools-scm and pkgconfig there), so every
# build back end is pinned too. The check at the end fails on any drift from the lock.
LOCK := $(CURDIR)/requirements.lock
PIP_LOCKED = PIP_CONSTRAINT=$(LOCK) $(1) -m pip install -q --disable-pip-version-check
BUILD_TOOLS := pip setuptools wheel cffi setuptools-scm pkgconfig

$(VENV)/.installed: pyproject.toml setup.py requirements.lock $(wildcard accel/backends/cpu/*.c accel/backends/cpu/*.h accel/backends/cpu/build.py appliance/operators/psi/*.c appliance/operators/psi/*.h appliance/operators/psi/build.py) | deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(call PIP_LOCKED,$(PY)) $(BUILD_TOOLS)
	$(call PIP_LOCKED,$(PY)) -e '.[test]'
	$(PY) scripts/lock_requirements.py --check
	touch $@

venv: $(VENV)/.installed

# Refresh the lock on purpose: resolve the newest releases in a throwaway venv, rewrite
# requirements.lock, show what moved. Review the diff, run make test, commit.
LOCK_VENV := build/lock-venv
lock: deps
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade $(BUILD_TOOLS)
	$(LOCK_VENV)/bin/python -m pip install -q --disable-pip-version-check '.[test]'
	$(LOCK_VENV)/bin/python scripts/lock_requirements.py > requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf $(LOCK_VENV)
	git diff --stat -- requirements.lock || true

lint: venv
	$(VENV)/bin/ruff check .

test: deps venv lint reference-venv
	$(PY) -m pytest -q

# A development node: state in ./state (SoftHSM2 token and swtpm inside it), the daemon in the
# background, the panel in the foreground; Ctrl-C stops both. --dev overrides the profile with
# 'development' (every capability on), so a laptop that meets no profile can run keygen and jobs.
PANEL_LISTEN ?= 127.0.0.1:8080
run: deps venv reference-venv
	@mkdir -p $(STATE)
	@test -s $(STATE)/admin-password || { umask 077; $(PY) -c 'import secrets; print(secrets.token_urlsafe(18))' > $(STATE)/admin-password; }
	$(PY) -m appliance.cli init --dev --state-dir $(STATE) --admin-password-file $(STATE)/admin-password
	@$(PY) -m appliance.cli serve --state-dir $(STATE) & daemon=$$!; \
	trap 'kill $$daemon 2>/dev/null; wait $$daemon' EXIT INT TERM; \
	for i in $$(seq 150); do [ -S $(STATE)/run/noded.sock ] && break; sleep 0.2; done; \
	echo; echo "Panel: http://$(PANEL_LISTEN)/ - log in as admin, password: cat $(STATE)/admin-password"; echo; \
	$(PY) -m appliance.cli panel --state-dir $(STATE) --listen $(PANEL_LISTEN)

bench: deps venv reference-venv
	$(PY) -m accel.bench paillier --bits 2048
	$(PY) -m accel.bench ntt
	$(PY) -m appliance.bench channel
	$(PY) -m appliance.bench psi --size 100000

# SecretFlow's `spu`: the engine of PSI's `secretflow` provider and of the order statistics
# (found here by appliance/operators/engines.py, so `make test` and `make run` build it), and
# the reference the benchmarks measure against. spu 0.9.5 needs numpy<2 and jax<=0.4.34 (the
# appliance venv has numpy 2) and ships cp310/cp311 wheels only, so it gets its own venv,
# pinned by scripts/reference_engines.txt, and runs as separate processes. To refresh the
# pins, see that file's header.
REF_VENV := build/reference-venv
REF_PINS := scripts/reference_engines.txt
$(REF_VENV)/.installed: $(REF_PINS)
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] in ((3, 10), (3, 11)), "spu 0.9.5 needs Python 3.10 or 3.11"'
	rm -rf $(REF_VENV) && $(PYTHON) -m venv $(REF_VENV)
	PIP_CONSTRAINT=$(CURDIR)/$(REF_PINS) $(REF_VENV)/bin/python -m pip install -q \
		--disable-pip-version-check spu==0.9.5
	diff <(grep -v '^#' $(REF_PINS) | sort -f) <($(REF_VENV)/bin/python -m pip freeze | sort -f)
	$(REF_VENV)/bin/python -c 'import spu.psi, spu.libspu'
	touch $@

reference-venv: $(REF_VENV)/.installed

# Flower (`flwr` with Ray), the reference `python -m appliance.bench homo` measures against:
# its own pins (numpy, protobuf, grpcio) and Ray do not belong in the appliance's venv.
FLOWER_VENV := build/flower-venv
FLOWER_PINS := scripts/flower_engines.txt
$(FLOWER_VENV)/.installed: $(FLOWER_PINS)
	rm -rf $(FLOWER_VENV) && $(PYTHON) -m venv $(FLOWER_VENV)
	PIP_CONSTRAINT=$(CURDIR)/$(FLOWER_PINS) $(FLOWER_VENV)/bin/python -m pip install -q \
		--disable-pip-version-check 'flwr[simulation]==1.42.0'
	$(FLOWER_VENV)/bin/python -c 'import flwr.simulation, ray'
	touch $@

flower-venv: $(FLOWER_VENV)/.installed

# FATE's own hetero SecureBoost (pyfate 2.2.0, pandas 2.1.4), the reference that
# `python -m appliance.bench fl --breast-cancer` runs beside ours. The pins hold
# torch==2.13.0+cpu, so pip takes the CPU wheel, never a CUDA build.
FATE_VENV := build/fate-venv
FATE_PINS := scripts/fate_engines.txt
$(FATE_VENV)/.installed: $(FATE_PINS)
	rm -rf $(FATE_VENV) && $(PYTHON) -m venv $(FATE_VENV)
	PIP_CONSTRAINT=$(CURDIR)/$(FATE_PINS) $(FATE_VENV)/bin/python -m pip install -q \
		--disable-pip-version-check pyfate==2.2.0 pandas==2.1.4
	$(FATE_VENV)/bin/python -c 'import fate.ml.ensemble, fate.arch.launchers.multiprocess_launcher, sklearn'
	touch $@

fate-venv: $(FATE_VENV)/.installed

# On a machine with an NVIDIA GPU: CUDA tests and GPU benchmarks as one JSON document. It
# installs nothing, so it runs with the venv's Python when there is one, else $(PYTHON).
gpu-check:
	$$( [ -x $(PY) ] && echo $(PY) || echo $(PYTHON) ) scripts/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find . -name '*.so' -path './accel/*' -delete

# Installer disk image: build/image/pec-appliance.img (see images/README.md).
image-deps:
	$(MAKE) --no-print-directory deps DEB_PACKAGES="$(IMAGE_DEB_PACKAGES)"

image: image-deps venv
	nice -n 19 images/build-image.sh

# Boots the image of the current tree under QEMU and checks it from the host. The Debian base
# is cached, so the image step costs a minute or two when only the code changed.
image-test: image
	nice -n 19 $(PY) images/boot_test.py
