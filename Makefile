# kfp-mlops: the two commands of the README (`make demo`, `make test`) and what they build on.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ROWS ?= 20000
# The CPU build of PyTorch first: a bare "torch" requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= build

CHECKOV_VENV ?= .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov

.PHONY: install system-deps checkov demo test lint golden constraints bench-ingest bench-materialize bench-train clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## virtualenv with the package, every step's dependencies and the test tools

demo: install  ## sample data -> compile -> run the training pipeline locally from its YAML -> print the result
	$(BIN)/kfp-mlops sample-data --output $(DEMO_DIR)/sample-data --rows $(ROWS)
	$(BIN)/kfp-mlops compile --output-dir $(DEMO_DIR)/pipelines
	$(BIN)/kfp-mlops run training --local --package $(DEMO_DIR)/pipelines/training.yaml \
		--config examples/training.yaml --pipeline-root $(DEMO_DIR)/local-runs
	@run="$$(ls -td $(DEMO_DIR)/local-runs/kfp-mlops-training-*/ | head -1)"; \
		cat "$${run}ingest/summary"; echo; cat "$${run}evaluate-model/model_card"

system-deps:  ## Debian's redis-server and PostgreSQL, which the Feast tests start (installed only where missing)
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql; }

$(CHECKOV):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==3.3.30

checkov: $(CHECKOV)  ## checkov (the manifests' policy scanner) in its own virtualenv: it pins many packages

test: install system-deps $(CHECKOV)  ## lint and the whole suite, real servers included
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/hadolint images/*/Dockerfile

golden: install  ## rewrite tests/golden/*.yaml after an intended pipeline change
	UPDATE_GOLDEN=1 $(BIN)/python -m pytest -q tests/test_compile.py

constraints: install  ## re-pin images/constraints.txt from the tested environment
	{ sed -n '1,3p' images/constraints.txt; $(BIN)/pip freeze --exclude-editable \
		| grep -viE '^(torch|triton|nvidia-|kfp-mlops|pytest|ruff|hadolint|seaweedfs|fake-gcs|mypy|iniconfig|pluggy|pygments|librt|ast-serialize|types-)'; } \
		> images/constraints.txt.new && mv images/constraints.txt.new images/constraints.txt

bench-ingest: install
	$(BIN)/python benchmarks/ingest.py

bench-materialize: install
	$(BIN)/python benchmarks/materialize.py

bench-train: install
	$(BIN)/python benchmarks/train.py

clean:
	rm -rf build .pytest_cache .ruff_cache
