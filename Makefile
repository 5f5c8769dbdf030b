# emolab: every target is idempotent. `make demo` and `make test` are the two set-up commands.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
export EMOLAB_CACHE ?= $(CURDIR)/.cache/emolab
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

MODEL  ?= smollm2
BUNDLE ?= vectors/smollm2
OUT    ?= runs/extract-$(MODEL)
PORT   ?= 8000
BACKEND ?= auto

.PHONY: setup test demo lint clean smollm2 extract inspect serve notebooks bench lab

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

smollm2: setup
	$(BIN)/emolab build-model smollm2

test: setup
	$(BIN)/python -m pytest -ra

demo: setup
	$(BIN)/emolab extract --model $(MODEL) --data bundled --max-per-class 150 --batch-size 32 --output $(OUT)
	$(BIN)/emolab test $(OUT)

extract: setup
	$(BIN)/emolab extract --model $(MODEL) --output $(OUT) $(ARGS)

inspect: setup
	$(BIN)/emolab test $(BUNDLE)

lint: setup
	$(BIN)/ruff check emolab tests scripts

clean:
	rm -rf $(VENV) .cache runs executed .pytest_cache .ruff_cache build dist *.egg-info
