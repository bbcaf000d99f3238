#!/usr/bin/env bash
# Wheels that the lent GPU machine's image (Python 3.12, torch, transformers, accelerate, tokenizers, pandas,
# pyarrow...) lacks and scripts/gpu_check.py needs: TRL, datasets, SQLAlchemy, Alembic and their own missing
# needs. The GPU machine reaches no registry, so they travel in .whl/ (git-ignored; carry [".whl"]).
#   scripts/gpu_wheels.sh && du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
pkgs=(trl==1.16.0 datasets==5.2.0 "dill==0.4.1" "multiprocess==0.70.19" sqlalchemy==2.1.9 alembic==1.20.1
      "mako==1.4.3")
plat=()
for n in 28 27 17 14 5; do plat+=(--platform "manylinux_2_${n}_x86_64"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" --platform manylinux2014_x86_64 --platform any -d .whl "${pkgs[@]}"
ls .whl
