# The two commands of the README. Both install into .venv first (pinned by constraints.txt).
PYTHON ?= python3
VENV := .venv
comma := ,

# TensorFlow build, an extra of the package: cpu (default) or gpu (NVIDIA, Linux x86_64); never both.
# A GPU machine runs `make test TF_EXTRA=gpu` once; later runs keep the build the venv already has
# (on x86_64 the plain `tensorflow` distribution is the CUDA one, the CPU build is `tensorflow-cpu`).
ifndef TF_EXTRA
TF_EXTRA := $(if $(and $(filter x86_64,$(shell uname -m)),$(wildcard $(VENV)/lib/python3*/site-packages/tensorflow-[0-9]*.dist-info)),gpu,cpu)
endif
# Linux aarch64 has no mediapipe 0.10.21 wheel: there, `make test EXTRAS=cpu,test,beam`.
# beam: `preprocess --engine beam` (Apache Beam), tested by the suite.
EXTRAS ?= $(TF_EXTRA),video,test,beam
# The stamp names the extras, so changing them reinstalls instead of keeping the old set.
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
EXTRA_LIST := $(subst $(comma), ,$(EXTRAS))
# The TensorFlow distribution that must not stay beside the one these extras bring.
TF_OTHER := $(if $(filter gpu,$(EXTRA_LIST)),tensorflow-cpu,$(if $(and $(filter cpu,$(EXTRA_LIST)),$(filter x86_64,$(shell uname -m))),tensorflow))

.PHONY: demo test test-fast bench clean

demo: $(STAMP)
	$(VENV)/bin/python -m fingerspell demo

# PYTEST_ARGS passes pytest options, e.g. PYTEST_ARGS='-m "not video"' where the video extra cannot install.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# The fast lane: everything but the tests marked slow (training, export, MediaPipe, heavy subprocesses).
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

# tensorflow and tensorflow-cpu install into the same folder: when the other build is there,
# both are removed before installing, so the venv ends with exactly one complete TensorFlow.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed*
	$(VENV)/bin/python -m pip install -q --upgrade pip
	if [ -n "$(TF_OTHER)" ] && $(VENV)/bin/python -m pip show -q $(TF_OTHER) 2>/dev/null; then \
		$(VENV)/bin/python -m pip uninstall -y -q tensorflow tensorflow-cpu; fi
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

clean:
	rm -rf $(VENV) work
