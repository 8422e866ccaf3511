# `make test` is what CI runs (.ci/run). It builds .venv on first use and re-installs only when pyproject changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-slow lint format clean demo browser checkpoints baseline-checkpoints

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the CPU build on disk here; anything looser pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Debian's Chromium for the real-browser app test (Playwright drives it; `playwright install` cannot download here).
browser:
	@command -v chromium >/dev/null 2>&1 || { (apt-get install -y -q chromium || (apt-get update -q && \
		apt-get install -y -q chromium)) >/dev/null 2>&1 || echo "note: chromium not installed: browser test skipped"; }

test: $(STAMP) browser
	$(BIN)/python -m pytest -q --durations=15

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The Gradio demo on the bundled checkpoints: no training, no download. Binds 127.0.0.1 (GRADIO_SERVER_PORT, 7860).
demo: $(STAMP)
	$(BIN)/python -m apps

# Retrain the bundled Shapes GAN weights (hours on a CPU; see docs/RESULTS.md for the budgets and the figures).
checkpoints: $(STAMP)
	T2I=$(BIN)/t2i PARALLEL=1 configs/t2i/make_shapes_gan_checkpoints.sh

# The VQGAN and latent-diffusion baselines (#5): VQ autoencoder, then prior and diffusion side by side.
baseline-checkpoints: $(STAMP)
	T2I=$(BIN)/t2i PARALLEL=1 configs/t2i/make_shapes_baseline_checkpoints.sh

clean:
	rm -rf $(VENV) build *.egg-info
