# tunevlseg — `make help` lists the targets. Every target creates .venv on first use.
SHELL := /bin/bash
PY_BOOT ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
SPEC    ?= experiments/mini.yaml
DATA    ?=
STORAGE ?= $(CURDIR)/results/runs
RUN     ?= $(STORAGE)/$(basename $(notdir $(SPEC)))
RAY_ADDRESS ?=
MLFLOW  ?= $(MLFLOW_TRACKING_URI)
MINI_DATA := $(CURDIR)/data/mini
# Exact pins of every dependency and test tool (`make lock` refreshes it; docs/reproducibility.md).
LOCK    ?= requirements/lock.txt
LOCK_EXTRAS := dev,dashboard,embeddings
export TOKENIZERS_PARALLELISM := false

.DEFAULT_GOAL := help
.PHONY: help install lock compare-mini test test-slow test-gpu test-cluster smoke benchmark bench-cpu bench-gpu plan tables mlflow-ui optuna-dashboard wheel pretrain-mini mini-data cluster-up cluster-down lint clean

help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

# Installed without pip's byte-compilation (about 60 s on 2 cores, for ~21,000 files of which a run imports
# ~4,500) and without upgrading the venv's pip first. Python compiles a module when a process first imports
# it and keeps the bytecode in .venv/pycache (PYTHONPYCACHEPREFIX: the checkout stays clean), also where
# PYTHONDONTWRITEBYTECODE is set (as on this project's machines), which would make every process - each
# Ray worker, `tables`, `embeddings`, each test run - compile the same modules again.
export PYTHONDONTWRITEBYTECODE :=
export PYTHONPYCACHEPREFIX ?= $(abspath $(VENV))/pycache
$(VENV)/.installed: setup.cfg setup.py $(LOCK)
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -c $(LOCK) -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## create .venv and install the project (editable) with its test tools, pinned by the lock

# A fresh venv resolves setup.cfg's ranges anew; its `pip freeze` (less the project itself) is the lock.
# torch keeps no local label (+cpu, +cu128): `torch==2.13.0` is met by the CPU wheel here and by a CUDA build
# a GPU cluster installs first.
lock: ## re-resolve setup.cfg's ranges in a fresh venv and write the exact pins to $(LOCK) (on purpose only)
	rm -rf .lock-venv && $(PY_BOOT) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q -e '.[$(LOCK_EXTRAS)]'
	mkdir -p $(dir $(LOCK))
	{ echo "# Exact pins for tunevlseg's runtime and test tools (extras $(LOCK_EXTRAS)); made by \`make lock\` on"; \
	  echo "# $$(date -u +%F) with Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())'). Use: pip install -c $(LOCK) -e '.[dev]'"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | grep -viE '^(tunevlseg|-e )' | sed -E 's/^(torch==[^+]+)\+.*/\1/'; \
	} > $(LOCK).tmp && mv $(LOCK).tmp $(LOCK)
	rm -rf .lock-venv
	@echo "wrote $(LOCK) ($$(grep -vc '^#' $(LOCK)) pins); review the diff, commit it, then make install"

test: install ## run the default test suite (CPU, < 10 min on 2 cores)
	$(PY) -m pytest -q

test-slow: install ## run the slow tests too (end-to-end sweeps, resume after SIGKILL)
	$(PY) -m pytest -q -m "slow and not gpu and not cluster"

test-gpu: install ## the CUDA tests (mixed precision, device normalisation, no host sync in a step); needs a GPU
	$(PY) -m pytest -q -m gpu

test-cluster: install ## start a real two-node Ray cluster on loopback and run the cluster tests
	$(PY) -m pytest -q -m cluster

benchmark: install $(if $(DATA),,mini-data) ## run SPEC (default: the embedded mini benchmark) end to end; rerun to resume
	$(PY) -m benchmark run $(SPEC) --storage $(STORAGE) $(if $(DATA),--data $(DATA)) $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS)) $(if $(MLFLOW),--mlflow $(MLFLOW))
	$(PY) -m benchmark tables $(RUN) --out $(RUN)/tables --format all --vs-paper
	$(if $(filter experiments/smoke.yaml smoke,$(SPEC)),@echo "smoke spec: synthetic trainable with no data to embed",$(PY) -m benchmark embeddings --spec $(SPEC) $(if $(DATA),--data $(DATA)) --max-images 500 $(if $(filter experiments/mini.yaml mini experiments/mini_seeds.yaml mini_seeds,$(SPEC)),--reference mini-corpus) --out $(RUN)/embeddings)
	@echo "MLflow UI: make mlflow-ui RUN=$(RUN)   (it prints the address of the sweep's runs)"
	$(if $(filter experiments/mini.yaml mini,$(SPEC)),@$(MAKE) --no-print-directory compare-mini)

# Did this machine reproduce the committed results/mini (README's table)? Prints the verdict, never fails.
compare-mini: install
	@echo "== tunevlseg compare $(RUN) results/mini  (docs/reproducibility.md)"
	@$(PY) -m benchmark compare $(RUN) results/mini; rc=$$?; \
	if [ $$rc = 0 ]; then echo "== reproduced: the committed results/mini holds on this machine (within each cell's noise)"; \
	elif [ $$rc = 1 ]; then echo "== NOT reproduced within noise: the cells named above differ from results/mini by more than their own spread. Another CPU kind (other SIMD kernels) or other package versions change the numbers; see docs/reproducibility.md. Your run's tables are valid for your machine; the README's orderings that rest on those cells are not confirmed."; \
	else echo "== compare could not run (exit $$rc): see the line above"; fi

bench-cpu: install ## the speed figures of BENCHMARKS.md measured on this machine's CPU (~11 min)
	$(PY) benchmarks/data_pipeline.py --workers 2
	$(PY) benchmarks/trial_loop.py --weights models/clipseg-mini --learner vpt --batch 16 --steps 20
	$(PY) benchmarks/trial_loop.py --weights models/clipseg-mini --learner coop --batch 16 --steps 20
	$(PY) benchmarks/fixed_cost.py --gpu-images-per-s 1500
	$(PY) benchmarks/feature_cache.py --quick

bench-gpu: install ## the GPU figures (H100/H200; `make install` there gets CUDA torch): step ladder, MFU, packing, loop
	$(PY) benchmarks/gpu_step.py --compile --pack 1 2 4
	$(PY) benchmarks/trial_loop.py --config clipseg-rd64 --learner vpt --batch 32 --steps 50
	$(PY) benchmarks/feature_cache.py --device cuda --batch 32

mini-data: install ## generate the three synthetic mini datasets in data/mini (seconds; idempotent)
	$(PY) -m benchmark data make-synthetic --dst $(MINI_DATA)

smoke: install $(if $(DATA),,mini-data) ## rehearse SPEC: one short trial per cell with data, a table, the projected cost (SPEC=experiments/table3.yaml DATA=DIR)
	$(PY) -m benchmark run $(SPEC) --smoke --storage $(STORAGE) $(if $(DATA),--data $(DATA)) $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS))

plan: install ## print the cells and trials of SPEC without running anything
	$(PY) -m benchmark plan $(SPEC)

tables: install ## regenerate tables and figures of RUN from its Parquet files
	$(PY) -m benchmark tables $(RUN) --out $(RUN)/tables --format all --vs-paper

mlflow-ui: install ## open the MLflow UI on the run's sqlite store (http://127.0.0.1:5000)
	$(PY) -m benchmark.mlflow_mirror.paths $(RUN)
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUN))/mlflow.db --host 127.0.0.1 --port 5000

optuna-dashboard: install ## open optuna-dashboard on the run's studies (http://127.0.0.1:8080; extra: .[dashboard])
	@test -x $(VENV)/bin/optuna-dashboard || $(PY) -m pip install -q -c $(LOCK) -e '.[dashboard]'
	$(VENV)/bin/optuna-dashboard sqlite:///$(abspath $(RUN))/optuna.db --host 127.0.0.1 --port 8080

wheel: install ## build the wheel (with the data cards, specs, mini VLSMs and paper tables) into dist/
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist .

pretrain-mini: install ## re-create the embedded mini VLSMs in models/ (fixed seed, ~20 min on 2 CPU cores)
	$(PY) -m trainables.mini.pretrain --vlsm clipseg --out models/clipseg-mini
	$(PY) -m trainables.mini.pretrain --vlsm cris --out models/cris-mini

cluster-up: install ## start a real two-node Ray cluster + MLflow server on loopback (see cluster/README.md)
	cluster/local-two-node.sh up

cluster-down: ## stop the local two-node cluster started by cluster-up
	cluster/local-two-node.sh down

lint: install ## ruff (config: ruff.toml): pyflakes, pycodestyle, import order, blind excepts
	$(VENV)/bin/ruff check .

clean: ## remove caches (keeps .venv and results)
	rm -rf .pytest_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +
