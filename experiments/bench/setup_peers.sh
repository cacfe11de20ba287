#!/usr/bin/env bash
# Separate virtual environments for the peer frameworks of experiments/bench/compare.py (their
# JAX / PyTorch pins clash with pojax's), under ${1:-/tmp/peers}:
#   tunix/    google-tunix (JAX)
#   easydel/  easydel 0.3.0 + pillow and torch (undeclared: its HF loader needs both)
# TRL runs in the pojax environment (the `test` extra has trl and torch).
# Then: python -m experiments.bench.compare --peer=trl --peer=tunix:$ROOT/tunix/bin/python \
#          --peer=easydel:$ROOT/easydel/bin/python
set -euo pipefail
ROOT=${1:-/tmp/peers}
mkdir -p "$ROOT"
python3 -m venv "$ROOT/tunix" && "$ROOT/tunix/bin/pip" install -q google-tunix transformers tokenizers
python3 -m venv "$ROOT/easydel" && "$ROOT/easydel/bin/pip" install -q "easydel==0.3.0" pillow "torch==2.13.0" transformers
echo "peers ready under $ROOT"
