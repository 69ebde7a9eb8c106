#!/usr/bin/env bash
# Download, here (where pip reaches PyPI), the wheels that benchmarks/gpu_check.sh installs on the offline GPU
# box: Python 3.12 (the box's), x86-64. They go into .whl/ (git-ignored, never committed; ~22 MB, carried with
# `carry=[".whl"]`). The list is benchmarks/gpu_requirements.txt plus what those need and the box lacks or has
# too old (read off `pip install --dry-run --report` against the box's package list in the device notes).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
wheels=(
  liger-kernel==0.8.5 transformers==5.25.0 peft==0.21.2 accelerate==1.16.0 hydra-core==1.3.2 omegaconf==2.3.0
  huggingface_hub==2.4.0 kernels==0.19.1 tomlkit==0.15.3 regex==2026.12.2 click==8.5.1 hf-xet==1.8.0
  httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 anyio==4.16.0 idna==3.21 h11==0.16.0 typing-extensions==4.16.0
  filelock==4.3.2 fsspec==2026.9.0 packaging==26.4 tqdm==4.70.1
)
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .whl "${wheels[@]}"
# omegaconf's parser runtime exists only as a source archive: build its (pure Python) wheel here
"$PYTHON" -m pip wheel --quiet --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -1 .whl && du -sh .whl
