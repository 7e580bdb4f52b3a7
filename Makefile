# kfp-mlops: the two commands of the README (`make demo`, `make test`) and what they build on.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
ROWS ?= 20000
KEEP_TRITON ?=
# The CPU build of PyTorch first: a bare "torch" requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_ENTITIES ?= 100000 100001 100002

# The MLflow tracking server (tests start it; `mlflow ui` browses the local runs) in its own virtualenv: the full
# mlflow pins pyarrow<26 and a web stack the steps never need (they use mlflow-skinny, the same version).
MLFLOW_VENV ?= .venv-mlflow
MLFLOW_SPEC ?= mlflow==3.17.2
MLFLOW := $(MLFLOW_VENV)/bin/mlflow

CHECKOV_VENV ?= .venv-checkov
CHECKOV := $(CHECKOV_VENV)/bin/checkov

REGISTRY ?= ghcr.io/kfp-mlops
TAG ?= $(shell $(BIN)/python -c "import kfp_mlops; print(kfp_mlops.__version__)" 2>/dev/null)
# make images-local / test-images: the step images built here, named as `kfp-mlops compile --image-registry` names
# them. Where no Docker engine answers, podman runs with the repository's settings (kfp_mlops/containers.py reads the
# same two files) and keeps its images in /var/lib/kfp-mlops-containers, outside the clone.
export CONTAINERS_CONF ?= $(CURDIR)/images/podman/containers.conf
export CONTAINERS_STORAGE_CONF ?= $(CURDIR)/images/podman/storage.conf
# --prune-build-stages: also remove train's DeepSpeed build stage (6.1 GB; kept by default so a code change rebuilds
# only the code layers). CI passes it: one build on a clean machine.
IMAGES_LOCAL_FLAGS ?=
STEPS := $(notdir $(patsubst %/,%,$(dir $(wildcard images/*/Dockerfile))))

.PHONY: install system-deps checkov mlflow-venv triton-venv demo demo-monitoring test lint golden constraints image-locks images \
	container-deps images-local test-images \
	bench-ingest bench-materialize bench-train bench-quantize bench-serve bench-drift bench-inference bench-lease bench-tracking bench-images bench-performance clean

# DeepSpeed is built here with its CPU shared-memory op compiled in (as the train image does), so no training process
# compiles anything at start; it needs torch in the virtualenv first (--no-build-isolation).
$(STAMP): pyproject.toml images/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -c "from deepspeed.git_version_info import installed_ops as o; assert o['deepspeed_shm_comm']" 2>/dev/null \
		|| DS_BUILD_SHM_COMM=1 DS_ACCELERATOR=cpu $(BIN)/python -m pip install --quiet --no-build-isolation \
			--no-cache-dir --no-deps --force-reinstall --constraint images/constraints.txt deepspeed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## virtualenv with the package, every step's dependencies and the test tools

triton-venv: install  ## Triton's own virtualenv (.venv-triton: numpy<2, onnxruntime, the nvidia-pytriton server)
	$(BIN)/kfp-mlops local venv

demo: install triton-venv  ## sample data, local Triton, the training pipeline from its YAML, a prediction by entity id
	$(BIN)/kfp-mlops sample-data --output build/sample-data --rows $(ROWS)
	$(BIN)/kfp-mlops compile --output-dir build/pipelines
	mkdir -p build/triton/models
	@set -e; \
	$(BIN)/kfp-mlops local up --model-repository build/triton/models; \
	if [ -z "$(KEEP_TRITON)" ]; then trap '$(BIN)/kfp-mlops local down' EXIT; \
	else echo "Triton keeps running (KEEP_TRITON): stop it with $(BIN)/kfp-mlops local down"; fi; \
	$(BIN)/kfp-mlops run training --local --package build/pipelines/training.yaml --config examples/training.yaml \
		--pipeline-root build/local-runs; \
	run="$$(ls -td build/local-runs/kfp-mlops-training-*/ | head -1)"; \
	echo; cat "$${run}evaluate-model/model_card"; echo; \
	echo "Predictions by entity id (features from Feast's online store, probabilities from Triton):"; \
	$(BIN)/kfp-mlops predict $(addprefix --entity ,$(DEMO_ENTITIES)) --url 127.0.0.1:8001 --protocol grpc \
		--model churn --model-repository build/triton/models --feature-repo "$${run}features/feature_repo"; \
	echo; echo "Lineage of the served model, from the MLflow registry (build/local-runs/mlflow.db):"; \
	$(BIN)/kfp-mlops lineage churn@champion

demo-monitoring: install triton-venv system-deps  ## the demo's training run, then batch inference, labels, performance, alerts
	$(BIN)/kfp-mlops sample-data --output build/sample-data --rows $(ROWS)
	$(BIN)/kfp-mlops compile --output-dir build/pipelines
	mkdir -p build/triton/models
	@set -e; \
	$(BIN)/kfp-mlops local up --model-repository build/triton/models; \
	trap '$(BIN)/kfp-mlops local down' EXIT; \
	$(BIN)/kfp-mlops run training --local --package build/pipelines/training.yaml --config examples/training.yaml \
		--pipeline-root build/local-runs; \
	$(BIN)/python -m kfp_mlops.demo_monitoring --config examples/training.yaml --data build/sample-data \
		--pipelines build/pipelines --directory build/monitoring --pipeline-root build/local-runs

system-deps:  ## Debian's redis-server, PostgreSQL, Prometheus (promtool), Alertmanager, Pushgateway (where missing)
	@command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql; }
	@command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null \
		&& command -v prometheus-pushgateway >/dev/null || { apt-get update -qq && apt-get install -y -qq \
		--no-install-recommends prometheus prometheus-alertmanager prometheus-pushgateway; }

$(MLFLOW):
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MLFLOW_VENV)/bin/python -m pip install --quiet "$(MLFLOW_SPEC)" "psycopg[binary]>=3.1"

mlflow-venv: $(MLFLOW)  ## the MLflow tracking server and UI in their own virtualenv (.venv-mlflow)

$(CHECKOV):
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==3.3.30

checkov: $(CHECKOV)  ## checkov (the manifests' policy scanner) in its own virtualenv: it pins many packages

test: install system-deps $(CHECKOV) $(MLFLOW) triton-venv  ## lint, image checks and the whole suite, real servers included
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint images/*/Dockerfile
	$(BIN)/python images/lock.py --check
	$(BIN)/python -m pytest

lint: install  ## ruff and hadolint only
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint images/*/Dockerfile

golden: install  ## rewrite tests/golden/*.yaml after an intended pipeline change
	UPDATE_GOLDEN=1 $(BIN)/python -m pytest -q tests/test_compile.py

constraints: install  ## re-pin images/constraints.txt from the tested environment (torch's own dependencies left free)
	$(BIN)/python images/lock.py --constraints

image-locks: install  ## resolve every image's install against its base on the registry: images/<step>/requirements.txt
	$(BIN)/python images/lock.py

images: install  ## build and push every step image: make images REGISTRY=registry.example.com/ml TAG=0.1.0
	@test -n "$(TAG)" && test "$(TAG)" != latest || { echo "set TAG to a version (latest is refused)"; exit 2; }
	for step in $(STEPS); do \
		docker build -f images/$$step/Dockerfile --build-arg VERSION=$(TAG) -t $(REGISTRY)/kfp-mlops-$$step:$(TAG) . \
		&& docker push $(REGISTRY)/kfp-mlops-$$step:$(TAG) || exit 1; \
	done

container-deps:  ## a container engine: none where Docker answers, else Debian's podman, runc, debootstrap (where missing)
	@docker info >/dev/null 2>&1 \
		|| { command -v podman && command -v runc && command -v debootstrap; } >/dev/null \
		|| { apt-get update -qq && apt-get install -y -qq podman runc debootstrap; }

images-local: install container-deps  ## build every step image here (cached): localhost/kfp-mlops/kfp-mlops-<step>:<version>
	$(BIN)/python images/build_local.py $(IMAGES_LOCAL_FLAGS)

test-images: images-local triton-venv  ## each image's checks, then both pipelines with every task in its own image
	$(BIN)/python -m pytest -m images tests/test_images_built.py

bench-ingest: install
	$(BIN)/python benchmarks/ingest.py

bench-materialize: install
	$(BIN)/python benchmarks/materialize.py

bench-train: install
	$(BIN)/python benchmarks/train.py

bench-quantize: install
	$(BIN)/python benchmarks/quantize.py

bench-serve: triton-venv  ## Triton against a hand-written FastAPI server, driven by wrk
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(BIN)/python benchmarks/serve.py

bench-drift: install
	$(BIN)/python benchmarks/drift.py

bench-inference: triton-venv  ## batch inference: Triton gRPC batched vs in-process vs row by row; peak memory by size
	$(BIN)/python benchmarks/inference.py

bench-tracking: install  ## tracking's cost on a training pipeline run, and batched against one call per metric
	$(BIN)/python benchmarks/tracking.py

bench-performance: install  ## the performance check's join + metrics on 10M predictions against pyarrow + sklearn
	$(BIN)/python benchmarks/performance.py

bench-images: install  ## each step image's import seconds (first and warm) against the same imports on the host
	$(BIN)/python benchmarks/images.py

bench-lease: install  ## the deploy lease and the record's compare-and-swap against plain writes (local, SeaweedFS)
	$(BIN)/python benchmarks/lease.py

clean:
	rm -rf build .pytest_cache .ruff_cache
