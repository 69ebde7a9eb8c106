#!/usr/bin/env bash
# The GPU check of issue 23 (benchmarks/gpu_check.py says what it runs): on a bare offline GPU box, installs
# the wheels brought along in .whl/ (what the box lacks: Liger Kernel, transformers 5.25 and its hub, peft,
# hydra/omegaconf), then runs the phases within 8 minutes and writes benchmarks/results/gpu_check.{md,json}.
#
# A future session with a GPU (the device tool; 15 minutes of device time, the start included):
#   1. here:  bash benchmarks/gpu_wheels.sh      (downloads the wheels into .whl/, git-ignored, ~26 MB)
#   2. run(command="bash benchmarks/gpu_check.sh --workdir /tmp/gc; cp benchmarks/results/gpu_check.* /tmp/gc/*.log $OUT/",
#          carry=[".whl"], timeout_s=600)
#      ~8 minutes (the script's budget is 480 s, the wheel install included); back come the two tables and
#      the five phase logs. To rerun a part: bash benchmarks/gpu_check.sh --phases train,liger+compile --budget-s 300
#   3. commit benchmarks/results/gpu_check.{md,json} (from files_at) and fill in the README's figures.
#
# Here, on the CPU (a test runs it, so it cannot rot): bash benchmarks/gpu_check.sh --device cpu [--out DIR]
# (the tiny model with this machine's packages: no wheels are installed; tables go to a temporary dir).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
case " $* " in *" --device cpu "*) on_gpu=no ;; *) on_gpu=yes ;; esac
if [ "$on_gpu" = yes ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  # into the box's own environment: pip keeps what it has that satisfies the pins and takes the rest from $WHEELS
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" -r benchmarks/gpu_requirements.txt
  # the C image kernels for this Python (optional: Pillow + numpy otherwise, slower loading)
  "$PYTHON" setup.py --quiet build_ext --inplace >/dev/null 2>&1 || echo "no C image kernels: the Pillow fallback loads images"
fi
exec "$PYTHON" benchmarks/gpu_check.py --started "$started" "$@"
