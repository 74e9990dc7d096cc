#!/usr/bin/env bash
# Downloads into .whl/ the wheels a GPU machine without internet needs for the tests and benchmarks, for
# Python 3.12 on x86-64 Linux (pinned: the versions the peer rows were written against). Run it where PyPI is
# reachable, copy .whl/ along with the repository, and benchmarks/run_gpu.sh installs them there.
# Not needed on a machine with internet: `pip install -e '.[test,kernels]' litgpt liger-kernel` does the same.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.14.0  # the trainer's CLI
  zstandard==0.25.0                                                       # .jsonl.zst data (tests)
  litgpt==0.5.13 liger-kernel==0.8.5                                      # peers in the benchmarks
  xformers==0.0.35  # the accelerators stage; built for torch 2.10 + CUDA 12.8: its start-up probe says if it loads
)
"${PYTHON:-python3}" -m pip download --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
# real prose for the `data` stage (benchmarks/prose_corpus.py): the Python docs' sources, from Debian 12's archive
if ! { command -v apt-get > /dev/null && (cd .whl && apt-get download python3.11-doc); }; then
  echo "note: no python3.11-doc .deb fetched (needs apt-get with Debian 12's lists): the data stage uses the bundled sample"
fi
ls -l .whl
