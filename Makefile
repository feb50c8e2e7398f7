# Soundverse Clips: `make run` serves the demo catalogue, `make test` runs the suite.
# Both install what they need into .venv first: `make run` the runtime set and
# the embedded PostgreSQL (requirements-run.txt), everything else the
# development set too (requirements-dev.txt, which includes the former).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A stamp per set, named by the checksum of the files that make it up: a
# changed file, or a venv that had only the other set, installs again.
RUN_REQUIREMENTS := requirements.txt requirements-run.txt
DEV_REQUIREMENTS := $(RUN_REQUIREMENTS) requirements-dev.txt
checksum = $(shell cat $(1) | cksum | cut -d' ' -f1)
RUN_STAMP := $(VENV)/.installed-run-$(call checksum,$(RUN_REQUIREMENTS))
DEV_STAMP := $(VENV)/.installed-dev-$(call checksum,$(DEV_REQUIREMENTS))

# The development server may fetch audio from origins on this machine;
# production leaves UPSTREAM_ALLOW empty (public addresses only).
export UPSTREAM_ALLOW ?= 127.0.0.0/8,::1/128

.PHONY: run test lint check clean test-deps bench soak migrate rollback seed migrate-media

define install
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(1)
endef

$(RUN_STAMP): $(RUN_REQUIREMENTS)
	$(call install,requirements-run.txt)
	rm -f $(VENV)/.installed-*
	touch $@

# The development set holds the runtime one: both stamps hold after it.
$(DEV_STAMP): $(DEV_REQUIREMENTS)
	$(call install,requirements-dev.txt)
	rm -f $(VENV)/.installed-*
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(PY) -m db.migrate
	$(PY) -m db.seed
	$(PY) server.py

# The data steps on their own, in the venv (a bare `python -m db.seed`
# outside it fails: ModuleNotFoundError). Same settings as `make run`: the
# embedded server under .data/ unless DATABASE_URL is set.
migrate: $(RUN_STAMP)
	$(PY) -m db.migrate

# Undoes every migration: the catalogue and its plays are dropped.
rollback: $(RUN_STAMP)
	$(PY) -m db.migrate --rollback

# Copies MEDIA_DIR's uploads into the bucket the S3_* settings name
# (idempotent, resumable): see README, "Past one machine".
migrate-media: $(RUN_STAMP)
	$(PY) -m streaming.migrate_to_s3

# PUBLIC_URLS=1 adds the SoundHelix examples (for machines with internet access).
seed: $(RUN_STAMP)
	$(PY) -m db.seed $(if $(PUBLIC_URLS),--public-urls)

test: $(DEV_STAMP) test-deps
	$(PY) -m pytest

# Real programs some tests drive: headless Chromium (end-to-end playback),
# Prometheus (the dashboard's queries) and Debian's PostgreSQL, whose contrib
# has pg_trgm (the search index's plan), and PgBouncer (the app behind it in
# transaction mode). Installed with apt-get when missing and possible; the
# tests that need them say why they skip otherwise. (The MP3 the upload
# tests send is committed: tests/fixtures/tune.mp3.)
TEST_PACKAGES := chromium prometheus postgresql pgbouncer
test-deps:
	@missing=""; for p in $(TEST_PACKAGES); do \
		case $$p in postgresql) ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 ;; \
			pgbouncer) test -x /usr/sbin/pgbouncer ;; *) command -v $$p >/dev/null ;; esac \
			|| missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing with apt-get:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
				|| echo "apt-get failed: tests needing$$missing will skip"; \
		else echo "cannot install$$missing: tests needing them will skip"; fi; \
	fi

# One-command benchmark against a real nginx origin (see bench/README.md).
bench: $(DEV_STAMP)
	$(PY) -m bench

# Ten minutes of mixed load, looking for leaks (see bench/README.md, "Soak").
soak: $(DEV_STAMP)
	$(PY) -m bench.soak

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
