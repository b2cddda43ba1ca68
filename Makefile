# The two commands of the README. Both install into .venv first (pinned by constraints.txt).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

demo: $(STAMP)
	$(VENV)/bin/python -m fingerspell.demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) work
