#!/usr/bin/env bash
# TRL's own vLLM client (and two steps of its ServerDistillationTrainer) against `opd serve`,
# checked against transformers: tests/trl/trl_client.py. Installs torch, transformers and TRL
# from PyPI into a virtual environment kept between runs ($OPD_PY_ENV, default
# ~/.cache/opd-py; about 5 GiB: PyPI's torch wheel brings CUDA libraries it does not use here).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opd-target}"
env="${OPD_PY_ENV:-$HOME/.cache/opd-py}"
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$model" ] || scripts/fetch-smollm2.sh
[ -x "$env/bin/python" ] || python3 -m venv "$env"
"$env/bin/pip" install -q --disable-pip-version-check \
  torch==2.15.0 transformers==5.25.0 trl==1.16.0 datasets requests
cargo build -q -p opd-cli --bin opd
"$env/bin/python" tests/trl/trl_client.py "$CARGO_TARGET_DIR/debug/opd" "$model" --train
