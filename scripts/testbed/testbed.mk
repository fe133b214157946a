# Local Kubernetes testbed (kwok + GPU node pools), see testbed/README.md.
# Included by the top-level Makefile, which provides PYTHON (Python 3.11 with PyYAML).
#
#   make testbed-up [EXTRA_NODES=1000] [TESTBED_NAME=gpu-portal-2] [TESTBED_PORT=6444] [NODE_BRINGUP_SECONDS=45]

TESTBED_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
PYTHON ?= python3
EXTRA_NODES ?= 0
TESTBED_NAME ?= gpu-portal
TESTBED_PORT ?=
# Simulated bring-up delay of elastic-pool (Karpenter) nodes; empty keeps the cluster's (default 45).
NODE_BRINGUP_SECONDS ?=

TESTBED_ARGS = --name $(TESTBED_NAME)

.PHONY: testbed-build testbed-up testbed-down testbed-status testbed-smoke

testbed-build: ## Build the control plane, etcd, kwok, Karpenter (kwok provider) and Kueue from source (cached)
	bash $(TESTBED_DIR)/build.sh

testbed-up: testbed-build ## Start the local cluster with Karpenter and Kueue and apply testbed/topology.yaml (EXTRA_NODES=N adds benchmark nodes)
	$(PYTHON) $(TESTBED_DIR)/testbed.py up $(TESTBED_ARGS) --extra-nodes $(EXTRA_NODES) $(if $(TESTBED_PORT),--port $(TESTBED_PORT)) \
		$(if $(NODE_BRINGUP_SECONDS),--node-bringup-seconds $(NODE_BRINGUP_SECONDS))

testbed-down: ## Stop the local cluster and delete its state
	$(PYTHON) $(TESTBED_DIR)/testbed.py down $(TESTBED_ARGS)

testbed-status: ## Show the local cluster's processes and node pools
	$(PYTHON) $(TESTBED_DIR)/testbed.py status $(TESTBED_ARGS)

testbed-smoke: ## End-to-end checks against the running cluster (scheduling, quota, admission policy, restart)
	PYTHON=$(PYTHON) bash $(TESTBED_DIR)/smoke.sh $(TESTBED_NAME)
