"""A few OPSD steps of SmolLM2 on GSM-style problems (`benches/opsd_step.rs`: rollout, frozen
teacher with the reference solution, JSD β = 0.5, AdamW), then the same training step in
PyTorch eager (`opsd_step.py`: teacher forward, student forward + backward, AdamW) on the same
shapes and thread count. Prints each opd step's metrics and a markdown table of the phases
with ratios (PyTorch seconds / opd seconds; above 1 is faster).

`--rows` sets the rows per step, `--output-head` opd's `output_head` (auto, fused, formed), and
`--vocab` replaces SmolLM2 by a model of its shape with that vocabulary and random weights, on
both sides (151936: Qwen3's). Both sides report the mean over the steps after the first; the
default of 6 steps keeps the second step, where opd's heap grows to its peak (the optimizer's
moments were allocated at the end of the first: ~225k page faults, 0.4-1.9 s on these
machines), from weighing half of that mean.

usage: python3 benches/peer/compare_opsd_step.py [--threads 2] [--steps 6] [--max-new-tokens 96]
       [--rows 2] [--output-head auto] [--vocab V]
Needs `pip install torch transformers gguf accelerate` and scripts/fetch-smollm2.sh.
"""
import argparse
import json
import os
import subprocess
import sys

from cargo_bench import ROOT, run_json, rust_binary

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--output-head", default="auto", choices=["auto", "fused", "formed"])
    ap.add_argument("--vocab", type=int)
    args = ap.parse_args()
    vocab = [] if args.vocab is None else [str(args.vocab)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    binary = rust_binary("opd-trainers", "opsd_step")
    proc = subprocess.run([binary, str(args.steps), str(args.max_new_tokens), str(args.rows),
                           args.output_head] + vocab, capture_output=True, text=True, env=env,
                          cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"opsd_step failed:\n{proc.stderr[-2000:]}")
    lines = [json.loads(l) for l in proc.stdout.strip().splitlines()]
    for m in lines[:-1]:
        s, t = m["seconds"], m["tokens_per_second"]
        print(f"step {m['step']}: rollout {s['rollout']:.1f} s ({t['rollout']:.1f} tok/s), "
              f"teacher {s['teacher']:.1f} s, student fwd+bwd {s['train']:.1f} s, "
              f"optimizer {s['optimizer']:.1f} s; JSD {m['divergence_mean']:.4f}, "
              f"reward {m['reward_mean']:.2f}, length {m['response_length_mean']:.0f}, "
              f"top-16 overlap {m['topk_overlap']:.2f}, shared teacher mass "
              f"{m['shared_mass_teacher']:.3f}, peak {m['peak_rss_mb']:.0f} MB")
    ours = lines[-1]
    theirs = run_json([sys.executable, os.path.join(HERE, "opsd_step.py"), str(ours["rows"]),
                       str(ours["student_context"]), str(ours["teacher_context"]),
                       str(ours["response"]), str(args.threads), str(args.steps)] + vocab, env)
    print(f"\nshapes: {ours['rows']} rows, student context {ours['student_context']}, teacher "
          f"context {ours['teacher_context']}, response ≤ {ours['response']} tokens\n")
    print("| phase | opd s | PyTorch s | PyTorch / opd |")
    print("|---|---|---|---|")
    for key, name in [("teacher_s", "teacher forward"), ("train_s", "student forward + backward"),
                      ("optimizer_s", "clip + AdamW")]:
        print(f"| {name} | {ours[key]:.2f} | {theirs[key]:.2f} | {theirs[key] / ours[key]:.2f}× |")
    total_ours = ours["teacher_s"] + ours["train_s"] + ours["optimizer_s"]
    total_theirs = theirs["teacher_s"] + theirs["train_s"] + theirs["optimizer_s"]
    print(f"| training step | {total_ours:.2f} | {total_theirs:.2f} | "
          f"{total_theirs / total_ours:.2f}× |")
    print(f"| rollout (opd only) | {ours['rollout_s']:.2f} | – | – |")
    print(f"| peak RSS MB | {ours['peak_mb']:.0f} | {theirs['peak_mb']:.0f} | – |")


if __name__ == "__main__":
    main()
