# flashclr: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# A machine without a GPU takes the CPU build of torch; with a GPU, pip's default (CUDA) build.
TORCH_SPEC := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
# DeepSpeed ships as an sdist whose setup.py imports torch: built in an isolated environment it
# would download a CUDA torch of several GB, so it is built against the torch installed here.
DEEPSPEED_SPEC := deepspeed==0.19.8

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --no-build-isolation $(DEEPSPEED_SPEC)
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

# The SimCLR v2 story on the embedded digits (16-px crops), 2 CPU ranks (gloo) or 2 GPUs: pretrain,
# fine-tune on 10% of the labels from head layer 1, distill, with a supervised-only baseline and
# linear probes of a random and of the pretrained encoder; prints the table (runs/demo/results.md).
DEMO := runs/demo
DEMO_DS := OMP_NUM_THREADS=1 $(VENV)/bin/deepspeed --num_gpus 2 train.py
DEMO_DATA := --data $(DEMO)/digits --small-images --image-size 16 --num-threads 1
DEMO_LABELS := --label-fraction 0.1 --batch-size 48 --optimizer adamw
DEMO_FT := $(DEMO_LABELS) --epochs 60 --lr-coef 0.0005
DEMO_LIN := $(DEMO_LABELS) --epochs 100 --lr 0.05

demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO) && date +%s > $(DEMO)/started
	$(PY) -m flashclr.dataio.digits $(DEMO)/digits
	$(DEMO_DS) --stage pretrain --model r18_0.25x_sk0 $(DEMO_DATA) --out $(DEMO)/pretrain \
		--batch-size 128 --epochs 10 --warmup-epochs 1
	$(DEMO_DS) --stage finetune --model r18_0.25x_sk0 --init random $(DEMO_DATA) $(DEMO_FT) --out $(DEMO)/supervised
	$(DEMO_DS) --stage finetune --init $(DEMO)/pretrain $(DEMO_DATA) $(DEMO_FT) --out $(DEMO)/finetune
	$(DEMO_DS) --stage linear-eval --model r18_0.25x_sk0 --init random $(DEMO_DATA) $(DEMO_LIN) \
		--out $(DEMO)/linear_random
	$(DEMO_DS) --stage linear-eval --init $(DEMO)/pretrain $(DEMO_DATA) $(DEMO_LIN) --out $(DEMO)/linear_pretrained
	$(DEMO_DS) --stage distill --teacher $(DEMO)/finetune --model r18_0.25x_sk0 $(DEMO_DATA) \
		--batch-size 128 --epochs 10 --optimizer adamw --lr 0.002 --out $(DEMO)/distill
	$(PY) -m flashclr.core.report $(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
