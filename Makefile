# Forest Cover MLOps platform. `make test` installs what it needs and runs everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK_STAMP := $(VENV)/.installed-dev

.PHONY: help bootstrap venv minio test test-only lint lock bench up down data-api clean

help:
	@echo "make test       install Debian packages + dev venv (needs root on a fresh machine), run every test"
	@echo "make lint       ruff"
	@echo "make lock       regenerate requirements/*.lock.txt (needs uv)"
	@echo "make bench      run benchmarks/ and print the numbers"
	@echo "make data-api   run the batch data API on :8001 from the dev venv"
	@echo "make up / down  local platform machine (Debian 13 in systemd-nspawn, provisioned by ansible/site.yml)"

bootstrap:
	@scripts/bootstrap.sh

$(LOCK_STAMP): requirements/dev.lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> installing the dev venv from requirements/dev.lock.txt"
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q --require-hashes -r requirements/dev.lock.txt
	@touch $@

venv: bootstrap $(LOCK_STAMP)

# MinIO and mc built from their Go modules, once per machine (scripts/build-minio.sh caches
# them in /var/cache/forest-cover-mlops): the tests' S3 server and the machine's MinIO.
minio:
	@scripts/build-minio.sh >/dev/null

test: venv minio lint lint-ansible test-only

test-only:
	$(PY) -m pytest

lint: $(LOCK_STAMP)
	$(VENV)/bin/ruff check app ui dags tests benchmarks ansible/filter_plugins
	$(VENV)/bin/ruff format --check app ui dags tests benchmarks ansible/filter_plugins

lock:
	scripts/lock.sh

bench: venv
	$(PY) benchmarks/data_api_bench.py

data-api: $(LOCK_STAMP)
	$(PY) -m app.data_api

# Local platform machine (scripts/machine.sh): Debian 13 in systemd-nspawn, provisioned by
# ansible/site.yml. PURGE=1 make down also deletes its disk.
.PHONY: lint-ansible
up: venv minio
	@scripts/machine.sh up

down:
	@scripts/machine.sh down

lint-ansible: $(LOCK_STAMP)
	cd ansible && ../$(VENV)/bin/yamllint -s .
	cd ansible && ANSIBLE_CONFIG=ansible.cfg ../$(VENV)/bin/ansible-lint --profile production site.yml roles

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts

# The platform image (scripts/image.sh): Debian 13 with the software preinstalled, as a qcow2
# (Terraform's base volume) and a vagrant-libvirt box, in $(MLOPS_CACHE)/image/.
MLOPS_CACHE ?= /var/cache/forest-cover-mlops
.PHONY: image test-vm
image: $(LOCK_STAMP)
	@scripts/image.sh

# Real VMs from that image (tests/vm/): Terraform and Vagrant create, provision, check and
# destroy one each under QEMU emulation, inside a network namespace (scripts/vm-lab.sh).
# About 40 minutes per VM on 2 cores (docs/provisioning.md): not part of `make test`. Builds the image when missing.
test-vm: $(LOCK_STAMP)
	@test -f $(MLOPS_CACHE)/image/forest-cover-mlops-debian13.qcow2 -a -f $(MLOPS_CACHE)/image/forest-cover-mlops-debian13-libvirt.box || scripts/image.sh
	MLOPS_TEST_VM=1 MLOPS_CACHE=$(MLOPS_CACHE) $(PY) -m pytest tests/vm -v -p no:cacheprovider

# The lab (scripts/lab.sh): three machines (data, control, serve) in their own network
# namespaces on a private bridge, provisioned by the same site.yml with
# ansible/inventories/lab/. `scripts/lab.sh forward` opens the UIs on this host's localhost.
.PHONY: lab lab-down test-lab
lab: venv minio
	@scripts/lab.sh up

lab-down:
	@scripts/lab.sh down

# The lab's checks (tests/lab/): health, firewall, who may reach which port. About a quarter
# of an hour on 2 cores: not part of `make test`. Reuses a running lab with MLOPS_LAB_REUSE=1.
test-lab: venv minio
	MLOPS_TEST_LAB=1 $(PY) -m pytest tests/lab -v -p no:cacheprovider
