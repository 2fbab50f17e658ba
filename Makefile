# Every target installs what it needs first (scripts/setup.sh is idempotent).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
SAMPLE := resources/sample/sentinel2_l1c_rgb.tif

.PHONY: setup demo test
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

demo: $(STAMP)
	mkdir -p out
	$(VENV)/bin/slimdiffsr run $(SAMPLE) out/demo_x4.tif --scale 4 --overwrite

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q tests
