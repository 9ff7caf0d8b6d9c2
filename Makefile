# tokenizers-mm: `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := data/embedded
DEMO_MODELS := flextok_tiny
SHAPE_DEMO_SHAPES ?= 4
SPEECH_DEMO_CLIPS ?= 6
SHAPE_DEMO_STEPS ?= 300
TIMES := reports/demo_times.tsv
export PYTHONUNBUFFERED := 1
export TOKENIZERS_MM_LOG ?= WARNING

.PHONY: help setup data demo demo-flow test test-slow lint bench wheels gpu-check clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@echo ">> creating $(VENV) with $(PYTHON) and installing the pinned set (first time: a few minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) ## create .venv and install tokenizers-mm with its pinned dependencies

# rebuilt when the vendored files or the builder change (a checkout that gained photos or meshes gets them)
EMBEDDED_SOURCES := $(shell find tokenizers_mm/embedded -type f 2>/dev/null) tokenizers_mm/data/embedded.py

$(DATA)/.built: $(STAMP) $(EMBEDDED_SOURCES)
	$(BIN)/tokenizers-mm data embedded --out $(DATA)
	touch $@

data: $(DATA)/.built ## build the embedded train/val shards (real photos, speech, meshes) in data/embedded

demo: $(DATA)/.built ## train, evaluate, export the tiny image, shape and speech tokenizers and an image token prior on the embedded data (<15 min on 2 cores)
	rm -rf $(addprefix runs/,$(DEMO_MODELS) vat_tiny codec_tiny flextok_tiny_prior) $(addprefix reports/,$(DEMO_MODELS) vat_tiny codec_tiny flextok_tiny_prior) $(TIMES)
	@mkdir -p reports
	@echo ">> image: the 1D tokenizer on the embedded photos"
	t0=$$(date +%s) && \
	$(BIN)/tokenizers-mm fit --config configs/image/base_1d_tiny.yaml --config configs/image/flextok_tiny.yaml && \
	for m in $(DEMO_MODELS); do \
		$(BIN)/tokenizers-mm evaluate --ckpt runs/$$m/checkpoints/last.ckpt --data $(DATA)/image \
			--out reports/$$m --csv-log runs/$$m/metrics.csv || exit 1; \
		$(BIN)/tokenizers-mm export --ckpt runs/$$m/checkpoints/last.ckpt --out exports/$$m \
			--report reports/$$m/report.json || exit 1; \
	done && \
	printf 'image (fit, evaluate, export)\t%s\n' $$(( $$(date +%s) - t0 )) >> $(TIMES)
	@echo ">> 3D: the shape tokenizer on the embedded meshes"
	t0=$$(date +%s) && \
	$(BIN)/tokenizers-mm fit --config configs/shape/base_vat.yaml --config configs/shape/vat_tiny.yaml --trainer.max_steps $(SHAPE_DEMO_STEPS) && \
	$(BIN)/tokenizers-mm evaluate --ckpt runs/vat_tiny/checkpoints/last.ckpt --data $(DATA)/mesh --out reports/vat_tiny \
		--max-samples $(SHAPE_DEMO_SHAPES) --resolution 48 && \
	$(BIN)/tokenizers-mm export --ckpt runs/vat_tiny/checkpoints/last.ckpt --out exports/vat_tiny \
		--report reports/vat_tiny/report.json && \
	printf '3D shape (fit, evaluate, export)\t%s\n' $$(( $$(date +%s) - t0 )) >> $(TIMES)
	@echo ">> speech: the neural codec on the embedded speech"
	t0=$$(date +%s) && \
	$(BIN)/tokenizers-mm fit --config configs/speech/codec_tiny.yaml && \
	$(BIN)/tokenizers-mm evaluate --ckpt runs/codec_tiny/checkpoints/last.ckpt --data $(DATA)/audio --out reports/codec_tiny \
		--max-samples $(SPEECH_DEMO_CLIPS) && \
	$(BIN)/tokenizers-mm export --ckpt runs/codec_tiny/checkpoints/last.ckpt --out exports/codec_tiny \
		--report reports/codec_tiny/report.json && \
	printf 'speech (fit, evaluate, export)\t%s\n' $$(( $$(date +%s) - t0 )) >> $(TIMES)
	@echo ">> round trip of the val images through the exported flextok_tiny (pipelines, no Lightning)"
	t0=$$(date +%s) && \
	$(BIN)/tokenizers-mm tokenize --model exports/flextok_tiny --data $(DATA)/image --split val \
		--out reports/flextok_tiny/val_tokens --workers 1 && \
	$(BIN)/tokenizers-mm decode --model exports/flextok_tiny reports/flextok_tiny/val_tokens \
		--out reports/flextok_tiny/roundtrip && \
	printf 'round trip (tokenize, decode)\t%s\n' $$(( $$(date +%s) - t0 )) >> $(TIMES)
	@echo ">> token prior: a small causal transformer over flextok_tiny's tokens; real files, rate control, samples"
	t0=$$(date +%s) && \
	$(BIN)/tokenizers-mm tokenize --model exports/flextok_tiny --device cpu --data $(DATA)/image \
		--out data/tokens/flextok_tiny --overwrite && \
	$(BIN)/tokenizers-mm fit --config configs/prior/flextok_tiny_prior.yaml && \
	$(BIN)/tokenizers-mm export --ckpt runs/flextok_tiny_prior/checkpoints/last.ckpt --out exports/flextok_tiny_prior \
		--overwrite && \
	$(BIN)/tokenizers-mm tokens report --data data/tokens/flextok_tiny --split val --prior exports/flextok_tiny_prior \
		--out reports/flextok_tiny_prior/tokens && \
	$(BIN)/tokenizers-mm compress --model exports/flextok_tiny --prior exports/flextok_tiny_prior $(PRIOR_DEMO_IMAGES) \
		--target-psnr $(PRIOR_DEMO_PSNR) --out reports/flextok_tiny_prior/rate_controlled && \
	$(BIN)/tokenizers-mm sample --model exports/flextok_tiny --prior exports/flextok_tiny_prior --n 16 --seed 0 \
		--out reports/flextok_tiny_prior/samples && \
	printf 'token prior (tokenize, fit, compress, sample)\t%s\n' $$(( $$(date +%s) - t0 )) >> $(TIMES)
	$(BIN)/python scripts/write_results.py --reports reports --times $(TIMES) --out docs/results.md
	$(BIN)/python scripts/write_index.py --reports reports --times $(TIMES) --out reports/index.html
	@echo
	@echo "== phase times (also in docs/results.md) =="
	@awk -F'\t' '{ printf "  %-36s %dm%02ds\n", $$1, $$2 / 60, $$2 % 60; t += $$2 } END { printf "  %-36s %dm%02ds\n", "total", t / 60, t % 60 }' $(TIMES)
	@echo
	@echo "== demo done: one report folder and one export per tokenizer =="
	@for m in $(DEMO_MODELS); do \
		echo "  reports/$$m/: report.json, rate_distortion.png (PSNR vs bytes beside JPEG and WebP; _ssim too),"; \
		echo "      reconstructions.png (top: originals; below: one row per number of tokens k), loss_curves.png"; \
		echo "  exports/$$m/: config.json, model.safetensors, README.md (model card) -> pipelines.load('exports/$$m')"; \
		echo "  runs/$$m/: checkpoints/last.ckpt, metrics.csv, samples/, TensorBoard (tensorboard --logdir runs)"; \
	done
	@echo "  reports/flextok_tiny/val_tokens/: the val images as token shards (dataset.json)"
	@echo "  reports/flextok_tiny/roundtrip/: those tokens decoded by the export (one PNG per image, _grid.png)"
	@echo "  reports/vat_tiny/: report.json (IoU, Chamfer, F-score per token budget beside decimated meshes),"
	@echo "      rate_quality.png, renders/*.png (ground truth, every number of scales, the decimated mesh)"
	@echo "  exports/vat_tiny/ -> tokenizers-mm encode --model exports/vat_tiny shape.obj --out t.npz; decode --out meshes/"
	@echo "  reports/codec_tiny/: report.json (mel / STFT distance, SI-SDR, STOI, PESQ per number of codebooks beside Opus"
	@echo "      and MP3), rate_quality.png, wav/ (originals and reconstructions at every bitrate)"
	@echo "  exports/codec_tiny/ -> tokenizers-mm encode --model exports/codec_tiny clip.wav --out t.npz --num-tokens 4"

FLOW_STEPS ?= 1 2 4 8 25
demo-flow: $(DATA)/.built ## train the rectified-flow decoder (flextok_flow_tiny) + its 1-step reflow student, evaluate per steps (~10 min)
	rm -rf runs/flextok_flow_tiny runs/flextok_flow_reflow_tiny reports/flextok_flow_tiny reports/flextok_flow_reflow_tiny
	$(BIN)/tokenizers-mm fit --config configs/image/base_flow_tiny.yaml --config configs/image/flextok_flow_tiny.yaml
	$(BIN)/tokenizers-mm fit --config configs/image/base_flow_tiny.yaml --config configs/image/flextok_flow_reflow_tiny.yaml
	for m in flextok_flow_tiny flextok_flow_reflow_tiny; do \
		$(BIN)/tokenizers-mm evaluate --ckpt runs/$$m/checkpoints/last.ckpt --data $(DATA)/image --out reports/$$m \
			--csv-log runs/$$m/metrics.csv --steps $(FLOW_STEPS) || exit 1; \
		$(BIN)/tokenizers-mm export --ckpt runs/$$m/checkpoints/last.ckpt --out exports/$$m \
			--report reports/$$m/report.json || exit 1; \
	done
	@echo "== reports/flextok_flow_tiny/ and reports/flextok_flow_reflow_tiny/: report.json, quality_vs_steps.png,"
	@echo "   reconstructions.png (rows: k), reconstructions_by_steps.png (rows: steps at k=K); exports/ beside them =="

# held-out photos of the embedded image split (whole photos are held out), for the prior demo's compress runs
PRIOR_DEMO_IMAGES ?= $(DATA)/_src/image/ColdRipple $(DATA)/_src/image/DarkestHour $(DATA)/_src/image/Volna
PRIOR_DEMO_PSNR ?= 18
# held-out meshes of the embedded mesh split, for the shape prior's rate-controlled compress run
PRIOR_DEMO_MESHES ?= $(addprefix $(DATA)/_src/mesh/primitives/,prim_013.ply prim_034.ply prim_043.ply prim_057.ply)
PRIOR_DEMO_IOU ?= 0.6
demo-prior: $(DATA)/.built ## after `make demo`: token priors on flextok_tiny's and vat_tiny's tokens; real bytes, rate control, samples
	@test -f exports/flextok_tiny/config.json || { echo "make demo-prior needs exports/flextok_tiny: run make demo first"; exit 2; }
	@test -f exports/vat_tiny/config.json || { echo "make demo-prior needs exports/vat_tiny: run make demo first"; exit 2; }
	rm -rf runs/flextok_tiny_prior reports/flextok_tiny_prior runs/vat_tiny_prior reports/vat_tiny_prior
	$(BIN)/tokenizers-mm tokenize --model exports/flextok_tiny --device cpu --data $(DATA)/image \
		--out data/tokens/flextok_tiny --overwrite
	$(BIN)/tokenizers-mm fit --config configs/prior/flextok_tiny_prior.yaml
	$(BIN)/tokenizers-mm export --ckpt runs/flextok_tiny_prior/checkpoints/last.ckpt --out exports/flextok_tiny_prior --overwrite
	$(BIN)/tokenizers-mm tokens report --data data/tokens/flextok_tiny --prior exports/flextok_tiny_prior \
		--out reports/flextok_tiny_prior/tokens
	$(BIN)/tokenizers-mm compress --model exports/flextok_tiny --prior exports/flextok_tiny_prior $(PRIOR_DEMO_IMAGES) \
		--out reports/flextok_tiny_prior/compressed
	$(BIN)/tokenizers-mm compress --model exports/flextok_tiny --prior exports/flextok_tiny_prior $(PRIOR_DEMO_IMAGES) \
		--target-psnr $(PRIOR_DEMO_PSNR) --out reports/flextok_tiny_prior/rate_controlled
	$(BIN)/tokenizers-mm decompress --model exports/flextok_tiny --prior exports/flextok_tiny_prior \
		reports/flextok_tiny_prior/rate_controlled --out reports/flextok_tiny_prior/decompressed
	$(BIN)/tokenizers-mm sample --model exports/flextok_tiny --prior exports/flextok_tiny_prior --n 16 --seed 0 \
		--out reports/flextok_tiny_prior/samples
	test ! -f runs/flextok_tiny/checkpoints/last.ckpt || $(BIN)/tokenizers-mm evaluate \
		--ckpt runs/flextok_tiny/checkpoints/last.ckpt --data $(DATA)/image --prior exports/flextok_tiny_prior \
		--out reports/flextok_tiny_prior/evaluate
	$(BIN)/tokenizers-mm tokenize --model exports/vat_tiny --device cpu --data $(DATA)/mesh \
		--out data/tokens/vat_tiny --overwrite
	$(BIN)/tokenizers-mm fit --config configs/prior/vat_tiny_prior.yaml
	$(BIN)/tokenizers-mm export --ckpt runs/vat_tiny_prior/checkpoints/last.ckpt --out exports/vat_tiny_prior --overwrite
	$(BIN)/tokenizers-mm compress --model exports/vat_tiny --prior exports/vat_tiny_prior $(PRIOR_DEMO_MESHES) \
		--target-iou $(PRIOR_DEMO_IOU) --out reports/vat_tiny_prior/rate_controlled
	@echo "== reports/flextok_tiny_prior/: tokens/ (report.json, tokens.png), compressed/ and rate_controlled/ (summary.json),"
	@echo "   samples/grid.png, evaluate/rate_distortion.png (real file bytes beside nominal, JPEG and WebP)"
	@echo "   reports/vat_tiny_prior/rate_controlled/summary.json: scales chosen per mesh for IoU $(PRIOR_DEMO_IOU), file bytes =="

test: $(DATA)/.built ## run the default test suite (creates .venv if missing)
	$(BIN)/python -m pytest -q

test-slow: $(DATA)/.built ## run the slow tests too
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: $(STAMP) ## ruff
	$(BIN)/ruff check tokenizers_mm pipelines tests scripts

bench: $(DATA)/.built ## benchmarks: data loader, mesh preprocessing, image, shape and speech tokenizers (speed, memory, latency), export load/latency (reports/bench/)
	$(BIN)/python scripts/bench_data.py --out reports/bench/data.json
	$(BIN)/python scripts/bench_mesh_data.py --out reports/bench/mesh_data.json
	$(BIN)/python scripts/bench_image.py --out reports/bench/image.json
	$(BIN)/python scripts/bench_shape.py --out reports/bench/shape.json
	$(BIN)/python scripts/bench_speech.py --out reports/bench/speech.json
	$(BIN)/python scripts/bench_export.py $(if $(wildcard exports/flextok_tiny/config.json),--model exports/flextok_tiny) --out reports/bench/export.json

# the packages a bare GPU image (torch, torchaudio, torchvision, Lightning, transformers, numpy, scipy, pillow)
# lacks, pinned as in .venv, for Python 3.12 on x86-64 Linux; scripts/gpu_check.sh installs them from .whl/
WHEELS_DIR := .whl
GPU_WHEELS := diffusers==0.42.1 vector-quantize-pytorch==1.32.0 einx==0.4.3 frozendict==2.5.1 webdataset==1.0.2 \
	braceexpand==0.1.7 trimesh==5.2.0 rtree==1.4.1 fast-simplification==0.2.0 libigl==2.6.3 soundfile==0.14.0 \
	cffi==2.1.1 pycparser==3.12 pystoi==0.4.1 constriction==0.5.0 jsonargparse==4.53.0 docstring-parser==0.18.0 \
	typeshed-client==2.15.0 importlib-metadata==10.2.0 zipp==4.1.2
WHEEL_PLATFORMS := $(addprefix --platform ,manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
	manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

wheels: $(STAMP) ## download the wheels a bare GPU machine lacks (cp312, x86-64) into .whl/ for scripts/gpu_check.sh
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(WHEEL_PLATFORMS) -d $(WHEELS_DIR) $(GPU_WHEELS)
	@du -sh $(WHEELS_DIR)

gpu-check: ## on one H100 / H200 (~10 min): B configs' samples/s, MFU, memory vs reference codecs, a flextok_b run (reports/gpu/)
	bash scripts/gpu_check.sh --out reports/gpu

# reports/index.html in a real browser: Debian's chromium, installed with apt-get (as root or with sudo) when missing
SCREENSHOT ?= reports/index.png
SCREENSHOT_SIZE ?= 1280,8000
.PHONY: report-screenshot
report-screenshot: ## screenshot reports/index.html with headless Chromium into reports/index.png (after make demo)
	@test -f reports/index.html || { echo "make report-screenshot needs reports/index.html: run make demo first"; exit 2; }
	@if ! command -v chromium >/dev/null 2>&1; then \
		if ! command -v apt-get >/dev/null 2>&1; then \
			echo "report-screenshot: skipped: chromium is not on PATH and there is no apt-get to install it"; exit 0; \
		elif [ "$$(id -u)" = 0 ]; then sudo=""; \
		elif sudo -n true 2>/dev/null; then sudo=sudo; \
		else echo "report-screenshot: skipped: chromium is missing and installing it needs root (sudo apt-get install chromium)"; exit 0; fi; \
		echo ">> installing Debian's chromium with apt-get"; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq chromium >/dev/null || exit 1; \
	fi; \
	rm -f $(SCREENSHOT); \
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=$(SCREENSHOT_SIZE) \
		--screenshot=$(abspath $(SCREENSHOT)) file://$(abspath reports/index.html) >/dev/null 2>&1; \
	test -s $(SCREENSHOT) || { echo "report-screenshot: chromium wrote no $(SCREENSHOT)"; exit 1; }; \
	echo "wrote $(SCREENSHOT) (reports/index.html at $(SCREENSHOT_SIZE) px)"

clean: ## remove built data, runs, reports and exports (keeps .venv)
	rm -rf data runs reports exports .pytest_cache .ruff_cache
