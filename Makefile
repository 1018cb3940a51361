# ntkrepro: make help
PY ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
SCALE ?= smoke
ARGS ?=
FIGURES ?=
SHARDS ?=
LAUNCHER ?=
SEEDS ?= 1,2,3
DIR ?=
NT_PEER := neural-tangents==0.6.5 frozendict  # test/benchmark peer only, never imported by the core
CONSTRAINTS ?= constraints.txt  # the tested versions (see the file); CONSTRAINTS= installs the newest
PIN = $(if $(strip $(CONSTRAINTS)),-c $(strip $(CONSTRAINTS)))
ALL_FIGURES := $(sort $(basename $(notdir $(wildcard conf/figure/*.yaml))))

# figure-<id> is a pattern rule: GNU make never applies one to a .PHONY target, so it depends on FORCE
.PHONY: help setup figures runs test bench plan collect verify report FORCE

help:  ## list the targets
	@echo "make setup [CONSTRAINTS=]       create .venv, install ntkrepro with the dev extra at the tested"
	@echo "                                 versions (constraints.txt; CONSTRAINTS= for the newest)"
	@echo "make figure-<id> [SCALE=smoke|cpu|paper] [ARGS='setting=value ...']   run one figure"
	@echo "make figures [SCALE=...] [FIGURES='id id ...'] [ARGS=...]   run every (or each listed) figure,"
	@echo "                                 go on past failures, end with a table"
	@echo "make runs [ARGS='--figure ID --scale S']   list the runs under outputs/ with their state"
	@echo "make test                       run the test suite"
	@echo "make bench                      benchmarks against neural-tangents (outputs/bench/)"
	@echo "make figure-<id> SCALE=paper SHARDS=<n> [LAUNCHER=slurm_gpu]   split into n jobs (a sweep);"
	@echo "                                 the same command again computes only the unfinished parts;"
	@echo "                                 slurm_gpu jobs run with device=gpu (stop unless jax sees a GPU)"
	@echo "make collect DIR=<sweep folder>  merge the parts of a split run (figure, claims)"
	@echo "make plan [SCALE=paper] [FIGURES=...] [SHARDS=n]   jobs, work, memory, time here / A100 / H100"
	@echo "                                 (SCALE defaults to paper for plan; ARGS='--pieces 10': the costliest pieces)"
	@echo "make verify SCALE=cpu SEEDS=1,2,3 [FIGURES=...] [ARGS=...]   claims at several seeds (verify.md)"
	@echo "make report                      outputs/report/index.html and REPORT.md from the runs"
	@echo "python -m ntkrepro --help       usage, settings, sweeps and every figure with its run times"
	@echo "figures: $(ALL_FIGURES)"

setup:
	python3 -m venv .venv
	.venv/bin/python -m pip install -q --upgrade pip
	.venv/bin/python -m pip install -q $(PIN) -e '.[dev]'
	.venv/bin/python -m pip install -q --no-deps $(PIN) $(NT_PEER)

figure-%: FORCE
ifeq ($(strip $(SHARDS)),)
	$(PY) -m ntkrepro figure=$* scale=$(SCALE) $(ARGS)
else
	$(PY) -m ntkrepro -m figure=$* scale=$(SCALE) shards=$(SHARDS) 'shard=range($(SHARDS))' \
		$(if $(strip $(LAUNCHER)),hydra/launcher=$(LAUNCHER)) $(if $(filter slurm_gpu,$(LAUNCHER)),device=gpu) $(ARGS)
endif

figures:
	$(PY) -m ntkrepro.batch --scale $(SCALE) --figures "$(FIGURES)" $(ARGS)

runs:
	$(PY) -m ntkrepro.runs $(ARGS)

plan:  # the paper scale unless SCALE is given
	$(PY) -m ntkrepro.plan --scale $(if $(filter command line environment,$(origin SCALE)),$(SCALE),paper) --figures "$(FIGURES)" \
		$(if $(strip $(SHARDS)),--shards $(SHARDS)) $(ARGS)

collect:
	$(PY) -m ntkrepro.collect $(DIR)

verify:  # the cpu scale unless SCALE is given (smoke evaluates no claims)
	$(PY) -m ntkrepro.verify --scale $(if $(filter command line environment,$(origin SCALE)),$(SCALE),cpu) --seeds $(SEEDS) --figures "$(FIGURES)" $(ARGS)

report:
	$(PY) -m ntkrepro.report $(ARGS)

test:
	$(PY) -m pytest -n 2 tests

bench:
	$(PY) -m pip install -q --no-deps $(PIN) $(NT_PEER)
	$(PY) -m ntkrepro.bench $(ARGS)

FORCE:
