# Soundverse Clips: `make run` serves the demo catalogue, `make test` runs the suite.
# Both install what they need into .venv first.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

# The development server may fetch audio from origins on this machine;
# production leaves UPSTREAM_ALLOW empty (public addresses only).
export UPSTREAM_ALLOW ?= 127.0.0.0/8,::1/128

.PHONY: run test lint check clean test-deps bench soak migrate rollback seed

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

run: $(STAMP)
	$(PY) -m db.migrate
	$(PY) -m db.seed
	$(PY) server.py

# The data steps on their own, in the venv (a bare `python -m db.seed`
# outside it fails: ModuleNotFoundError). Same settings as `make run`: the
# embedded server under .data/ unless DATABASE_URL is set.
migrate: $(STAMP)
	$(PY) -m db.migrate

# Undoes every migration: the catalogue and its plays are dropped.
rollback: $(STAMP)
	$(PY) -m db.migrate --rollback

# PUBLIC_URLS=1 adds the SoundHelix examples (for machines with internet access).
seed: $(STAMP)
	$(PY) -m db.seed $(if $(PUBLIC_URLS),--public-urls)

test: $(STAMP) test-deps
	$(PY) -m pytest

# Real programs some tests drive: headless Chromium (end-to-end playback),
# Prometheus (the dashboard's queries) and Debian's PostgreSQL, whose contrib
# has pg_trgm (the search index's plan). Installed with apt-get when missing
# and possible; the tests that need them say why they skip otherwise. (The
# MP3 the upload tests send is committed: tests/fixtures/tune.mp3.)
TEST_PACKAGES := chromium prometheus postgresql
test-deps:
	@missing=""; for p in $(TEST_PACKAGES); do \
		case $$p in postgresql) ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 ;; *) command -v $$p >/dev/null ;; esac \
			|| missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing with apt-get:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
				|| echo "apt-get failed: tests needing$$missing will skip"; \
		else echo "cannot install$$missing: tests needing them will skip"; fi; \
	fi

# One-command benchmark against a real nginx origin (see bench/README.md).
bench: $(STAMP)
	$(PY) -m bench

# Ten minutes of mixed load, looking for leaks (see bench/README.md, "Soak").
soak: $(STAMP)
	$(PY) -m bench.soak

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
