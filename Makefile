# The README's commands call these targets. `make help` lists them.
PY ?= python
STAGE = bash .ci/stage

.PHONY: help test check nbtest pytest export clean docs bench

help:  ## list targets
	@grep -E '^[a-z]+:.*## ' Makefile | sed 's/:.*## /\t/'

test: check nbtest pytest  ## everything CI runs: sync check, notebook tests, pytest (tests/ + nbval on job notebooks)

check:  ## notebooks clean (nbdev_clean) and mlops_nb/ in sync with nbs/ (nbdev_export)
	@$(STAGE) check $(PY) .ci/check_sync.py

nbtest:  ## run every notebook in nbs/ with nbdev_test
	@$(STAGE) nbdev_test nbdev_test --n_workers 2 --timing

pytest:  ## end-to-end tests in tests/ (two workers, a file's tests on one), then the job notebooks under nbval, in order
	@$(STAGE) pytest $(PY) .ci/pytest_strict.py -n 2 --dist loadfile --durations=30 -p no:cacheprovider tests
	@$(STAGE) nbval $(PY) .ci/pytest_strict.py --nbval-lax -p no:cacheprovider nbs/jobs

docs:  ## build the docs site into _docs/ from nbs/ (then `mlops-nb docs --serve` to browse it)
	mlops-nb docs

export:  ## clean notebooks and export the package (run after editing nbs/)
	nbdev_clean && nbdev_export

bench:  ## benchmarks (slow; figures go to BENCHMARKS.md by hand)
	$(PY) bench/fingerprint.py
	$(PY) bench/record.py
	$(PY) bench/jobs.py
	$(PY) bench/sweep.py
	$(PY) bench/store_concurrency.py
	$(PY) bench/serve.py
	$(PY) bench/drift.py
	$(PY) bench/pipeline.py
	$(PY) bench/batch.py
	$(PY) bench/docs.py
	$(PY) bench/notebook.py
