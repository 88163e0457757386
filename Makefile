# The workbook's commands. Each bootstraps .venv when it is missing.
#   make test         unit tests + every notebook under nbval (what CI runs)
#   make test-fast    unit tests only, no notebooks, no trained-model checks
#   make reproduce    run every notebook with full-size parameters; figures/ + figures/README.md
#   make reproduce MODEL=stabilityai/stable-diffusion-2-1-base DATA_ROOT=/data DATASETS="voc context coco-object ade20k" DEVICE=cuda
#                  [IMAGE_LISTS=elbo-t2ialign/metadata]   real data: every image of each list, the authors' evaluation
#                  [ONLY=table2_segmentation,fig7_gamma]   only these notebooks (comma-separated names)
#                  [JOBS=N]    notebooks at a time (default auto: 2 on a CPU, 1 with DEVICE=cuda)
#                  [NPROC=N]   first measure what the notebooks will measure in N processes (accelerate launch, one
#                              GPU each; on CPUs with DEVICE=cpu), then run the notebooks from that cache (docs/scale-out.md)
#   make effect-size  the calibration effect sized to +/-0.01 on 3 fresh toy splits per toy model (~25 min; not in reproduce)
#   make toy-model    train the toy model from scratch (resumable); TRAIN_ARGS="--device cuda --batch 128 ..."; ARCH=v / sd3: the v-prediction / SD 3-shaped one
#   make toy-check    the toy model's quality gates -> data/toy-sd/quality.json (ARCH=v / sd3: data/toy-sd-v / data/toy-sd3)
#   make explore      the widget explorer as a web page (Voila) on http://127.0.0.1:8866 (PORT=...)
#   make bench        benchmarks/bench_aligner.py
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0
export MPLBACKEND := Agg

REPRO_ARGS := $(if $(MODEL),--model $(MODEL)) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
              $(if $(DATASETS),--datasets "$(DATASETS)") $(if $(DEVICE),--device $(DEVICE)) $(if $(OUT),--out $(OUT)) \
              $(if $(IMAGE_LISTS),--image-lists $(IMAGE_LISTS)) $(if $(ONLY),--only $(ONLY))

.PHONY: venv test test-fast test-notebooks reproduce effect-size notebooks toy-model toy-check explore bench clean-cache

venv: .venv/.installed
.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[phrases]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

test: venv
	ELBO_WORKBOOK_OUT=.cache/nbval-figures $(PY) -m pytest -q tests notebooks --nbval-lax -p no:cacheprovider

test-notebooks: venv
	ELBO_WORKBOOK_OUT=.cache/nbval-figures $(PY) -m pytest -q notebooks --nbval-lax -p no:cacheprovider

# after editing notebooks/*.py: regenerate the .ipynb twins and re-execute them (their outputs are what nbval checks)
notebooks: venv
	$(PY) -m jupytext --to ipynb --update notebooks/*.py
	$(PY) -m elbo_lib.workbook --quick --in-place

# NPROC > 1: papermill runs each notebook in one kernel, so the notebooks' measurements are made beforehand by
# N processes under accelerate launch (every choice given: no accelerate config file or prompt is needed)
NPROC ?= 1
# notebooks at a time (auto: 2 on a CPU with >= 2 cores, each kernel on half of them; 1 on a GPU)
JOBS ?= auto
LAUNCH = .venv/bin/accelerate launch --multi_gpu --num_processes $(NPROC) --num_machines 1 --mixed_precision no \
         --dynamo_backend no --main_process_port 0

reproduce: venv
	$(if $(shell echo '$(NPROC)' | grep -Ex '[1-9][0-9]*'),,$(error NPROC must be a whole number >= 1, got '$(NPROC)'))
	$(if $(filter-out 1,$(NPROC)),$(LAUNCH) -m elbo_lib.workbook --fill-cache $(REPRO_ARGS))
	$(PY) -m elbo_lib.workbook $(REPRO_ARGS) --jobs $(JOBS)

effect-size: venv
	$(PY) -m elbo_lib.workbook --only effect_size $(if $(DEVICE),--device $(DEVICE)) $(if $(OUT),--out $(OUT))

# ARCH=sd: data/toy-sd (epsilon UNet); ARCH=v: data/toy-sd-v (v-prediction UNet); ARCH=sd3: data/toy-sd3 (SD 3-shaped
# MMDiT, rectified flow, 3,600 steps); v and sd3 reuse data/toy-sd's VAE and text encoder, frozen
ARCH ?= sd
TOY_DIR = $(if $(filter sd,$(ARCH)),data/toy-sd,$(if $(filter v,$(ARCH)),data/toy-sd-v,data/toy-sd3))
TOY_WORK = $(if $(filter sd,$(ARCH)),.cache/toy-train,.cache/toy-train-$(ARCH))
TOY_FLAGS = $(if $(filter v,$(ARCH)),--prediction-type v_prediction --share-from data/toy-sd) \
            $(if $(filter sd3,$(ARCH)),--denoiser mmdit --share-from data/toy-sd --unet-steps 3600)

toy-model: venv
	$(if $(filter sd v sd3,$(ARCH)),,$(error ARCH must be sd, v or sd3, got $(ARCH)))
	$(PY) -m elbo_lib.toy.train --out $(TOY_DIR) --work-dir $(TOY_WORK) $(TOY_FLAGS) $(TRAIN_ARGS)

toy-check: venv
	$(PY) -m elbo_lib.toy.check --model $(TOY_DIR) --json $(TOY_DIR)/quality.json --out-dir .cache/toy-check-$(ARCH)

PORT ?= 8866
explore: venv
	$(PY) -m voila notebooks/explore_toy.ipynb --no-browser --port=$(PORT) --Voila.ip=127.0.0.1

bench: venv
	$(PY) benchmarks/bench_aligner.py

clean-cache:
	rm -rf .cache/elbo_lib
