# Two commands do all the set-up on a fresh machine (Python >= 3.11 with venv):
#   make demo   create .venv, install hybridspend, run the demo on embedded defaults
#   make test   create .venv, install hybridspend with its test extras, run the tests
PYTHON ?= python3
VENV   ?= .venv
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hybridspend demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) .hybridspend
