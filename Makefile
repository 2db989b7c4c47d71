# One-command set-up: `make lab`, `make test`, `make demo` create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.panet_lite-installed
NB_TIMEOUT ?= 600

.PHONY: lab test test-portable test-fast test-browser demo notebooks clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[course,test]"
	@touch $(STAMP)

lab: $(STAMP)  ## open the course in JupyterLab
	$(BIN)/jupyter lab notebooks/

NBVAL := --nbval-lax --nbval-current-env --sanitize-with notebooks/nbval_sanitize.cfg \
	--nbval-cell-timeout=$(NB_TIMEOUT)

test: $(STAMP)  ## unit tests, then every notebook under nbval
	$(BIN)/python -m pytest tests notebooks $(NBVAL) --durations=20

# The notebooks again on PyTorch's generic CPU kernels (no AVX-512, oneDNN capped at AVX2): a
# checked output that only holds for one CPU's round-off fails here as it would elsewhere.
test-portable: $(STAMP)  ## every notebook under nbval, on another CPU code path
	ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest notebooks $(NBVAL) --durations=10

test-fast: $(STAMP)  ## unit tests only
	$(BIN)/python -m pytest tests

BROWSER_STAMP := $(VENV)/.panet_lite-browser-installed
$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[course,test,browser]"
	@touch $@

# JupyterLab on 127.0.0.1 in headless Chromium: every widget's controls change its figure as they say.
# Chromium is Debian's package (installed here when missing; needs root or sudo); screenshots of every
# widget before and after go to build/browser/ (PANET_SCREENSHOTS to choose another folder).
test-browser: $(BROWSER_STAMP)  ## the widgets in a real browser (JupyterLab + headless Chromium)
	@command -v chromium >/dev/null || { echo "installing Debian's chromium package"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }
	$(BIN)/python -m pytest tests_browser -v

demo: $(STAMP)  ## train a small PANet on the embedded dataset and report unseen-fold mIoU
	$(BIN)/python -m panet_lite demo

# Saved widget state goes stale ("model not found" on reopen); the static figure after each widget
# is what shows without a kernel. (nbclient's store_widget_state=False breaks Output widgets.)
export STRIP_WIDGET_STATE := import sys, nbformat; nb = nbformat.read(sys.argv[1], as_version=4); \
	nb.metadata.pop("widgets", None); nbformat.write(nb, sys.argv[1])

# The kernel talks over unix sockets (ipc): over TCP an execution once stalled for the whole cell
# timeout (600 s) and then finished normally, as if one message had been lost. The socket paths are
# relative and the kernel starts in the chapter's folder, so nbconvert runs there too.
CHAPTERS ?= notebooks/[0-9]*.ipynb
notebooks: $(STAMP)  ## re-execute every chapter in place, in a fresh kernel each (or CHAPTERS="notebooks/05*")
	for nb in $(CHAPTERS); do \
		(cd notebooks && $(CURDIR)/$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=$(NB_TIMEOUT) --KernelManager.transport=ipc "$$(basename $$nb)") \
			|| exit 1; \
		$(BIN)/python -c "$$STRIP_WIDGET_STATE" "$$nb" || exit 1; \
	done

clean:
	rm -rf $(VENV) .pytest_cache
