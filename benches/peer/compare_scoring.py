"""Teacher scoring on SmolLM2: opd's frozen teacher on the no-grad path
(`benches/teacher_scoring.rs speed`) against PyTorch eager + transformers under
`inference_mode` (`scoring.py`) on the same rows (BATCH responses of RESPONSE tokens behind
CONTEXT-token privileged contexts), same thread count, each in its own process, alternating
`--repeats` times. Prints a markdown table of response tokens/s with the ratios (opd /
PyTorch; above 1 is faster) for the sampled tokens' log-probs and for the full logits.

With `--precisions f32 bf16`, each run measures opd with its linear layers in f32 and in bf16
(`OPD_FROZEN_PRECISION`) and PyTorch in f32 and under `torch.autocast("cpu", dtype=torch.bfloat16)`
(`AUTOCAST=bf16`), each row against both PyTorch columns.

usage: python3 benches/peer/compare_scoring.py [--threads 2] [--batch 8] [--context 300]
       [--response 256] [--repeats 2] [--precisions f32 bf16]
Needs `pip install torch transformers gguf accelerate` and scripts/fetch-smollm2.sh.
"""
import argparse
import os
import sys

from cargo_bench import rust_binary, run_json

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=300)
    ap.add_argument("--response", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=None)
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               RAYON_NUM_THREADS=str(args.threads))
    binary = rust_binary("opd-teachers", "teacher_scoring")
    shape = [str(args.batch), str(args.context), str(args.response)]
    if args.precisions:
        return precisions(args, env, binary, shape)
    print("| run | opd sampled tok/s | PyTorch sampled tok/s | ratio | opd logits tok/s "
          "| PyTorch logits tok/s | ratio | opd peak MB | PyTorch peak MB |")
    print("|" + "---|" * 9)
    for run in range(args.repeats):
        # One autodiff row: the bench's comparison with the graph-recording path, kept short.
        ours = run_json([binary, "speed"] + shape + ["1"], env)
        theirs = run_json([sys.executable, os.path.join(HERE, "scoring.py")] + shape
                          + [str(args.threads)], env)
        print(f"| {run + 1} | {ours['fast_sampled_tok_s']:.1f} | {theirs['sampled_tok_s']:.1f} | "
              f"{ours['fast_sampled_tok_s'] / theirs['sampled_tok_s']:.2f}× | "
              f"{ours['fast_logits_tok_s']:.1f} | {theirs['logits_tok_s']:.1f} | "
              f"{ours['fast_logits_tok_s'] / theirs['logits_tok_s']:.2f}× | "
              f"{ours['peak_mb']:.0f} | {theirs['peak_mb']:.0f} |", flush=True)


def precisions(args, env, binary, shape):
    """opd at each precision against PyTorch eager f32 and bf16 autocast, alternating."""
    print("| run | opd weights | opd logits tok/s | PyTorch f32 | PyTorch bf16 autocast "
          "| opd / f32 | opd / autocast | opd peak MB | PyTorch peak MB (f32, autocast) |")
    print("|" + "---|" * 9)
    script = [sys.executable, os.path.join(HERE, "scoring.py")] + shape + [str(args.threads)]
    for run in range(args.repeats):
        torch = {p: run_json(script, dict(env, AUTOCAST=p)) for p in ["f32", "bf16"]}
        for precision in args.precisions:
            ours = run_json([binary, "speed"] + shape + ["1"],
                            dict(env, OPD_FROZEN_PRECISION=precision))
            f32, bf16 = torch["f32"]["logits_tok_s"], torch["bf16"]["logits_tok_s"]
            mine = ours["fast_logits_tok_s"]
            print(f"| {run + 1} | {precision} | {mine:.1f} | {f32:.1f} | {bf16:.1f} | "
                  f"{mine / f32:.2f}× | {mine / bf16:.2f}× | {ours['peak_mb']:.0f} | "
                  f"{torch['f32']['peak_mb']:.0f}, {torch['bf16']['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
