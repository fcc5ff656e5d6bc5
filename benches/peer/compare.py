"""Runs opd's and PyTorch's divergence benches in separate processes, same shapes and thread
count, and prints time and peak memory side by side with the ratios (ours / theirs).

usage: python3 benches/peer/compare.py [--threads 2] [--repeats 3] [--quick]
Needs `pip install torch numpy`. Builds the Rust side with `cargo bench --no-run`.
"""
import argparse
import json
import os
import subprocess
import sys

from cargo_bench import rust_binary

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ["full-jsd0.5", "full-reverse-kl", "topk64-reverse-kl", "sampled-k3"]


def run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only V=49,152, N=512")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    binary = rust_binary("opd-divergences", "peer_divergences")
    shapes = [(512, 49_152)] if args.quick else [(512, 49_152), (2048, 49_152), (512, 151_936), (2048, 151_936)]
    header = f"| kind | N | V | opd ms | torch ms | time ratio | opd peak MB | torch peak MB | memory ratio |"
    print(header)
    print("|" + "---|" * 9)
    for n, v in shapes:
        for kind in KINDS:
            ours = run([binary, kind, str(n), str(v), str(args.repeats)], env)
            theirs = run([sys.executable, os.path.join(HERE, "divergences.py"), kind, str(n), str(v),
                          str(args.repeats), str(args.threads)], env)
            def cell(r, key):
                return f"{r[key]:.0f}" if key in r else r.get("error", "?")
            def ratio(key):
                if key in ours and key in theirs and theirs[key] > 0:
                    return f"{ours[key] / theirs[key]:.2f}×"
                return "–"
            print(f"| {kind} | {n} | {v} | {cell(ours, 'ms')} | {cell(theirs, 'ms')} | {ratio('ms')} | "
                  f"{cell(ours, 'peak_mb')} | {cell(theirs, 'peak_mb')} | {ratio('peak_mb')} |", flush=True)


if __name__ == "__main__":
    main()
