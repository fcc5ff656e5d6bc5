"""One SFT step of SmolLM2 (forward, NLL on every response token, backward, AdamW): opd on
`Autodiff<Flex>` against PyTorch eager + transformers, same token ids, same thread count, each
configuration in its own process. Prints a markdown table with the ratio (opd / PyTorch tokens
per second; above 1 is faster) and each phase's time.

opd runs once per head: `fused` (the output head fused with the log-probs, no [B, T, V] logits;
what the trainers do) and `logits` (the whole logits formed, as before).

With `--lora-rank r` only LoRA adapters train, on both sides, and each side runs once per
`--precisions` entry: `f32`, and `bf16` (opd: the frozen base weights kept in bf16; PyTorch: its
forward under `torch.autocast("cpu", dtype=torch.bfloat16)`); every opd row is compared with
PyTorch in f32 and in bf16 autocast.

usage: python3 benches/peer/compare_sft_step.py [--threads 2] [--configs 2x128 8x256] [--steps 3]
                                                [--heads fused logits] [--features openblas]
                                                [--lora-rank 16 --precisions f32 bf16]
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
    ap.add_argument("--lora-rank", type=int, default=0)
    ap.add_argument("--precisions", nargs="+", default=["f32"])
    args = ap.parse_args()
    if args.lora_rank:
        return lora(args)
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


def lora(args):
    """LoRA steps: opd at each precision against PyTorch eager f32 and bf16 autocast."""
    base = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
                RAYON_NUM_THREADS=str(args.threads))
    binary = rust_binary("opd-policy", "peer_sft_step", args.features)
    print(f"LoRA rank {args.lora_rank} on every projection, fused head, {args.threads} threads")
    print()
    print("| B × T | opd frozen weights | opd tok/s | PyTorch f32 tok/s | PyTorch bf16 autocast "
          "tok/s | opd / f32 | opd / autocast | opd loss | PyTorch loss (f32, autocast) "
          "| opd peak MB | PyTorch peak MB (f32, autocast) |")
    print("|" + "---|" * 11)
    for config in args.configs:
        batch, length = config.split("x")
        torch = {}
        for autocast in ["f32", "bf16"]:
            env = dict(base, LORA_RANK=str(args.lora_rank), AUTOCAST=autocast)
            torch[autocast] = run_json([sys.executable, os.path.join(HERE, "sft_step.py"), batch,
                                        length, str(args.threads), str(args.steps)], env)
        for precision in args.precisions:
            env = dict(base, OPD_LORA_RANK=str(args.lora_rank), OPD_FROZEN_PRECISION=precision)
            ours = run_json([binary, batch, length, str(args.steps), "fused"], env)
            f32, bf16 = torch["f32"], torch["bf16"]
            print(f"| {batch} × {length} | {precision} | {ours['tok_s']:.1f} | {f32['tok_s']:.1f} | "
                  f"{bf16['tok_s']:.1f} | {ours['tok_s'] / f32['tok_s']:.2f}× | "
                  f"{ours['tok_s'] / bf16['tok_s']:.2f}× | {ours['loss']:.4f} | "
                  f"{f32['loss']:.4f}, {bf16['loss']:.4f} | {ours['peak_mb']:.0f} | "
                  f"{f32['peak_mb']:.0f}, {bf16['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
