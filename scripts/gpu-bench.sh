#!/usr/bin/env bash
# The checks and benchmarks of a machine with NVIDIA GPUs (none of this runs in CI, which has
# no GPU): the CUDA build, backend parity on the GPU through wgpu, a short `opd train` on
# CUDA, and the data-parallel step bench on 1 GPU and, with several, on 2 (one worker each).
# Prints what it measured; fails loudly on the first error.
#
#   scripts/gpu-bench.sh            # needs cargo, an NVIDIA driver and the CUDA toolkit
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opd-target}"
start=$SECONDS
step() { echo; echo "=== [$((SECONDS - start))s] $*"; }

gpus=$(nvidia-smi -L | wc -l)
step "$gpus GPU(s): $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs)"
scripts/fetch-smollm2.sh

step "build (cuda)"
cargo build --release -p opd-cli --features cuda

step "backend parity on the GPU (wgpu against flex)"
cargo test --release -p opd-divergences --features wgpu --test wgpu_parity
cargo test --release -p opd-policy --features wgpu --test wgpu_parity

step "opd train on CUDA: 2 GRPO steps of SmolLM2 with LoRA"
run=$(mktemp -d)
sed -e "s|^dir = .*|dir = \"$run/grpo\"|" -e 's/^steps = .*/steps = 2/' configs/grpo.toml >"$run/grpo.toml"
"$CARGO_TARGET_DIR/release/opd" train "$run/grpo.toml" --backend cuda
tail -n 3 "$run/grpo/metrics.jsonl"

workers="1"
if [ "$gpus" -ge 2 ]; then workers="1 2"; fi
step "data-parallel GRPO steps on CUDA, workers: $workers"
# shellcheck disable=SC2086
cargo bench -p opd-trainers --features cuda --bench parallel_step -- 3 $workers

step "done in $((SECONDS - start))s"
