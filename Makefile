# make test: set up .venv with every test dependency, then run the whole suite against the
# real services (REDIS_URL, POSTGRES_DSN, RabbitMQ on 127.0.0.1; MockupDB for MongoDB).
# make demo: set up, then run the example app under gunicorn on an embedded default.
# make peer: other libraries' own fork tests, from their sdists, with and without postfork
#   (peer/run.py; PEER_ARGS="--suite redis --mode warn" to narrow it; cache in .peer/).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-test

.PHONY: test demo bench peer venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

peer: $(STAMP)
	$(PY) peer/run.py $(PEER_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
