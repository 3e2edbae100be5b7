# make test: set up .venv with every test dependency, then run the whole suite against the
# real services (REDIS_URL, POSTGRES_DSN, MYSQL_URL, RabbitMQ on 127.0.0.1; MockupDB for MongoDB).
# make demo: set up, then run the example app under gunicorn on an embedded default.
# make soak: the soak app under gunicorn, uWSGI, Celery with recycling, restarts, kill -9 (soak/run.py; SHORT=1: a tenth).
# make peer: other libraries' own fork tests, from their sdists, with and without postfork
#   (peer/run.py; PEER_ARGS="--suite redis --mode warn" to narrow it; cache in .peer/).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-test

.PHONY: test demo bench peer soak venv clean check

venv: $(STAMP)

# mysqlclient (MySQLdb) has no Linux wheel on PyPI: pip compiles it against MariaDB's client
# library, found through pkg-config. On Debian, install both once (idempotent; root needed).
DEB_BUILD_DEPS := pkg-config libmariadb-dev

$(STAMP): pyproject.toml
	dpkg -s $(DEB_BUILD_DEPS) >/dev/null 2>&1 || ! command -v apt-get >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_BUILD_DEPS); }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# mypy --strict on postfork/ and integrations/ (configured in pyproject.toml); the import-cycle
# and layout checks are tests: tests/test_layout.py
check: $(STAMP)
	$(PY) -m mypy

demo: $(STAMP)
	$(PY) examples/demo.py

bench: $(STAMP)
	$(PY) benchmarks/run.py

soak: $(STAMP)
	$(PY) soak/run.py $(if $(SHORT),--short) $(SOAK_ARGS)

peer: $(STAMP)
	$(PY) peer/run.py $(PEER_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
