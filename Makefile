# One environment for the whole tree: `make demo` and `make test` set everything up first.
SHELL := /bin/bash
PYTHON_BOOT ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
UV := build/tools/bin/uv
UV_VERSION := 0.13.9
DEMO_MODELS := build/demo-models

.PHONY: setup system demo test lint format bench bench-toxic bench-llm bench-spam bench-twi \
	bench-answer-sheet fuzz soak eval-toxic eval-spam eval-twi eval-answer-sheet train-twi \
	train-answer-sheet deploy clean

setup: $(VENV)/.synced system $(DEMO_MODELS)/env.json

# uv installs exactly the locked versions; unlike pip it never picks a machine's local torch
# wheel, whose build breaks torchvision.ops.
$(UV):
	$(PYTHON_BOOT) -m pip install --quiet --disable-pip-version-check --target build/tools "uv==$(UV_VERSION)"

$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --python $(PYTHON_BOOT)
	@touch $@

system:
	@bash scripts/setup_system.sh

$(DEMO_MODELS)/env.json: scripts/build_demo_models.py $(VENV)/.synced
	$(PY) -m scripts.build_demo_models $(DEMO_MODELS)

demo: setup
	$(PY) -m scripts.demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.synced
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

eval-toxic: setup
	cd spaces/toxic-classifier && ../../$(PY) evaluate.py data/eval.jsonl $(EVAL_ARGS)

eval-spam: setup
	cd spaces/spam-mistral && ../../$(PY) evaluate.py data/eval.jsonl $(EVAL_ARGS)

# The held-out-voice synthetic set (espeak-ng voices no model here trained on), then its report,
# of the demo multi-task model unless TWI_MODEL names another (a Hub id or a folder).
TWI_MODEL ?= models/multitask-whisper
eval-twi: setup
	cd spaces/twi-speech && ../../$(PY) evaluate.py --synthetic ../../build/twi-speech/eval \
		--model-id $(TWI_MODEL) $(EVAL_ARGS)

# Retrain twi-speech's text intent classifier and its demo multi-task Whisper (synthetic speech).
train-twi: setup
	$(PY) spaces/twi-speech/training/train_text_intents.py
	$(PY) spaces/twi-speech/training/train_multitask.py $(TRAIN_ARGS)

# answer-sheet-ml: retrain the shipped reader and detector on synthetic sheets (about an hour
# on 2 cores; data and checkpoints in build/answer-sheet/); make eval-answer-sheet measures them
# on new sheets of the training styles and of the held-out styles.
train-answer-sheet: setup
	$(PY) spaces/answer-sheet-ml/training/train_reader.py $(READER_ARGS)
	$(PY) spaces/answer-sheet-ml/training/train_detector.py $(DETECTOR_ARGS)

eval-answer-sheet: setup
	cd spaces/answer-sheet-ml && ../../$(PY) evaluate.py --synthetic train --synthetic heldout $(EVAL_ARGS)

bench-answer-sheet: setup
	$(PY) -m benchmarks.answer_sheet.bench --write $(BENCH_ARGS)

bench-toxic: setup
	$(PY) -m benchmarks.toxic_classifier.bench $(BENCH_ARGS)

# llama.cpp runs beside the engine: the bench-llm group builds llama-cpp-python from source once
# (about 11 minutes on 2 cores); --inexact keeps the rest of the environment as it is.
$(VENV)/.bench-llm: $(VENV)/.synced
	$(UV) sync --frozen --inexact --group bench-llm
	@touch $@

bench-llm: setup $(VENV)/.bench-llm
	$(PY) benchmarks/llm_tiers/bench.py --write $(BENCH_ARGS)

bench-spam: setup
	$(PY) -m benchmarks.spam_mistral.bench $(BENCH_ARGS)

bench-twi: setup
	$(PY) -m benchmarks.twi_speech.bench --write $(BENCH_ARGS)

bench: bench-toxic bench-llm bench-spam bench-twi bench-answer-sheet

# Reliability on every Space (benchmarks/reliability/run.py): make fuzz [FUZZ_ARGS="--space NAME
# --examples 50"], make soak [SOAK_ARGS="--duration 30"]; both write benchmarks/results/reliability.md.
fuzz: setup
	$(PY) -m benchmarks.reliability.run fuzz $(FUZZ_ARGS)

soak: setup
	$(PY) -m benchmarks.reliability.run soak $(SOAK_ARGS)

# make deploy SPACE=toxic-classifier [DEPLOY_ARGS=--dry-run]
deploy: $(VENV)/.synced system
	@test -n "$(SPACE)" || { echo "usage: make deploy SPACE=<name> [DEPLOY_ARGS=...]"; exit 2; }
	bash scripts/deploy_space.sh $(SPACE) $(DEPLOY_ARGS)

clean:
	rm -rf build .pytest_cache .ruff_cache
