# ntkrepro: make help
PY ?= $(shell [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)
SCALE ?= smoke
ARGS ?=
NT_PEER := neural-tangents==0.6.5 frozendict  # test/benchmark peer only, never imported by the core
FIGURES := $(sort $(basename $(notdir $(wildcard conf/figure/*.yaml))))

.PHONY: help setup figures test bench $(addprefix figure-,$(FIGURES))

help:  ## list the targets
	@echo "make setup                      create .venv and install ntkrepro with the dev extra"
	@echo "make figure-<id> [SCALE=smoke|cpu|paper] [ARGS='hydra overrides']   run one figure"
	@echo "make figures [SCALE=...]        run every registered figure"
	@echo "make test                       run the test suite"
	@echo "make bench                      benchmarks against neural-tangents (outputs/bench/)"
	@echo "figures: $(FIGURES)"

setup:
	python3 -m venv .venv
	.venv/bin/python -m pip install -q --upgrade pip
	.venv/bin/python -m pip install -q -e '.[dev]'
	.venv/bin/python -m pip install -q --no-deps $(NT_PEER)

figure-%:
	$(PY) -m ntkrepro figure=$* scale=$(SCALE) $(ARGS)

figures:
	@set -e; for f in $(FIGURES); do $(PY) -m ntkrepro figure=$$f scale=$(SCALE) $(ARGS); done

test:
	$(PY) -m pytest -n 2 tests

bench:
	$(PY) -m pip install -q --no-deps $(NT_PEER)
	$(PY) -m ntkrepro.bench $(ARGS)
