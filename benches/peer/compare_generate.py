"""SmolLM2 generation: opd (KV cache, and without cache) against PyTorch + transformers
`generate` on the same GGUF file, same thread count, each configuration in its own process.
Prints a markdown table with the ratios (opd / transformers; above 1 is faster).

usage: python3 benches/peer/compare_generate.py [--threads 2] [--new-tokens 128] [--batches 1 8 32]
                                               [--features openblas] [--precisions f32 bf16]
`--precisions`: opd once per entry, its linear layers' weights in that precision
(`OPD_FROZEN_PRECISION`), each row against the same transformers (f32) run.
Needs `pip install torch transformers gguf accelerate` and scripts/fetch-smollm2.sh
(`--features openblas` also `apt install libopenblas-dev`).
"""
import argparse
import os
import sys

from cargo_bench import run_json, rust_binary

HERE = os.path.dirname(os.path.abspath(__file__))



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--no-cache-steps", type=int, default=8)
    ap.add_argument("--features", default="", help="cargo features of opd-rollout, e.g. openblas")
    ap.add_argument("--precisions", nargs="+", default=["f32"])
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               RAYON_NUM_THREADS=str(args.threads))
    binary = rust_binary("opd-rollout", "peer_generate", args.features)
    print("| batch | opd weights | prompt | new | opd prefill tok/s | hf prefill tok/s | ratio | opd decode tok/s "
          "| hf decode tok/s | ratio | opd no-cache tok/s | opd peak MB | hf peak MB |")
    print("|" + "---|" * 13)
    for batch in args.batches:
        theirs = run_json([sys.executable, os.path.join(HERE, "generate.py"), str(batch),
                      str(args.new_tokens), str(args.threads)], env)
        for precision in args.precisions:
            ours = run_json([binary, str(batch), str(args.new_tokens), str(args.no_cache_steps)],
                            dict(env, OPD_FROZEN_PRECISION=precision))
            ratio = lambda key: ours[key] / theirs[key]
            print(f"| {batch} | {precision} | {ours['prompt_len']} | {args.new_tokens} | "
                  f"{ours['prefill_tok_s']:.0f} | {theirs['prefill_tok_s']:.0f} | "
                  f"{ratio('prefill_tok_s'):.2f}× | {ours['decode_tok_s']:.1f} | "
                  f"{theirs['decode_tok_s']:.1f} | {ratio('decode_tok_s'):.2f}× | "
                  f"{ours['no_cache_tok_s']:.1f} | {ours['peak_mb']:.0f} | {theirs['peak_mb']:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
