"""One SFT step of SmolLM2 (forward, NLL on every response token, backward, AdamW): opd on
`Autodiff<Flex>` against PyTorch eager + transformers, same token ids, same thread count, each
configuration in its own process. Prints a markdown table with the ratio (opd / PyTorch tokens
per second; above 1 is faster) and each phase's time.

opd runs once per head: `fused` (the output head fused with the log-probs, no [B, T, V] logits;
what the trainers do) and `logits` (the whole logits formed, as before).

usage: python3 benches/peer/compare_sft_step.py [--threads 2] [--configs 2x128 8x256] [--steps 3]
                                                [--heads fused logits] [--features openblas]
Needs `pip install torch transformers gguf accelerate` and scripts/fetch-smollm2.sh.
"""
import argparse
import os
import sys

from cargo_bench import run_json, rust_binary

HERE = os.path.dirname(os.path.abspath(__file__))



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", default=["2x128", "8x256"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--heads", nargs="+", default=["fused", "logits"])
    ap.add_argument("--features", default="", help="cargo features of opd-policy, e.g. openblas")
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               RAYON_NUM_THREADS=str(args.threads))
    binary = rust_binary("opd-policy", "peer_sft_step", args.features)
    print("| B × T | opd head | opd tok/s | PyTorch tok/s | ratio | opd fwd / bwd / AdamW s "
          "| PyTorch fwd / bwd / AdamW s | opd loss | PyTorch loss | opd peak MB | PyTorch peak MB |")
    print("|" + "---|" * 11)
    for config in args.configs:
        batch, length = config.split("x")
        theirs = run_json([sys.executable, os.path.join(HERE, "sft_step.py"), batch, length,
                      str(args.threads), str(args.steps)], env)
        phases = lambda r: f"{r['forward_s']:.2f} / {r['backward_s']:.2f} / {r['optimizer_s']:.2f}"
        for head in args.heads:
            ours = run_json([binary, batch, length, str(args.steps), head], env)
            print(f"| {batch} × {length} | {head} | {ours['tok_s']:.1f} | {theirs['tok_s']:.1f} | "
                  f"{ours['tok_s'] / theirs['tok_s']:.2f}× | {phases(ours)} | {phases(theirs)} | "
                  f"{ours['loss']:.4f} | {theirs['loss']:.4f} | {ours['peak_mb']:.0f} | "
                  f"{theirs['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
