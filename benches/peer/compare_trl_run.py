"""One arm of the results' `opd-teacher` experiment trained by `opd train` and by TRL
(`trl_run.py`: its `DistillationTrainer` for the OPD arm, `--trainer grpo` its `GRPOTrainer`
for the GRPO arm) on the same machine, seeds alternating between the two,
each side in its own process with nothing else running: seconds per step and its split, peak
memory, updates, generated tokens, and the final model's held-out accuracy from `opd eval` (the
same grader and greedy decoding for both). Prints a markdown table and writes every seed's
numbers to WORK/compare.json.

The run file is one of `docs/results/opd-teacher/runs/*/config.toml` (the reverse-KL arm by
default); its relative paths (`models/…`, the teacher's `runs/results/…/final`) resolve from
`--cwd`, where the results harness ran. Each seed's opd run is that file with its seeds set and
evaluations off (`eval_every = 0`), so neither side evaluates during training.

usage: python3 benches/peer/compare_trl_run.py --cwd DIR [--config RUN.toml] [--seeds 3]
       [--trainer distill|grpo] [--budget 2000] [--threads 2] [--work DIR] [--opd PATH] [--report]
Needs `pip install torch transformers trl peft` and the `opd` binary (`cargo build --release`).
"""
import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
DEFAULT_CONFIG = os.path.join(
    ROOT, "docs/results/opd-teacher/runs/opd-reverse-kl-full-2000-s0/config.toml")


def with_seed(text, seed, out_dir):
    """The run file `text` with its LoRA and training seeds `seed`, its output in `out_dir`, and no
    evaluations during training."""
    lines, section = [], None
    for line in text.splitlines():
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            section = header.group(1)
        elif section in ("model.lora", "train") and re.match(r"^seed\s*=", line):
            line = f"seed = {seed}"
        elif section == "output" and re.match(r"^dir\s*=", line):
            line = f'dir = "{out_dir}"'
        elif section == "output" and re.match(r"^eval_every\s*=", line):
            line = "eval_every = 0"
        lines.append(line)
    return "\n".join(lines) + "\n"


def path_in(text, section, key):
    """`key`'s string value in `[section]` of a run file."""
    table = tomllib.loads(text)
    for part in section.split("."):
        table = table.get(part, {})
    value = table.get(key)
    if not isinstance(value, str):
        raise SystemExit(f"the run file has no [{section}] {key}")
    return value


def timed(cmd, cwd, env):
    """Runs `cmd` under `/usr/bin/time -v`; returns its stdout and peak resident memory (MiB)."""
    proc = subprocess.run(["/usr/bin/time", "-v"] + cmd, cwd=cwd, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return proc.stdout, peak / 1024


def accuracy(opd, config, model, cwd):
    out = subprocess.run([opd, "eval", "--config", config, "--model", model,
                          "--max-new-tokens", "64"], cwd=cwd, capture_output=True, text=True,
                         check=True).stdout
    return float(re.search(r"avg@1 ([0-9.]+)", out).group(1))


def opd_side(opd, config_text, seed, work, cwd, env):
    out_dir = os.path.relpath(os.path.join(work, f"opd-s{seed}"), cwd)
    config = os.path.join(work, f"opd-s{seed}.toml")
    with open(config, "w") as f:
        f.write(with_seed(config_text, seed, out_dir))
    _, peak = timed([opd, "train", config], cwd, env)
    with open(os.path.join(cwd, out_dir, "metrics.jsonl")) as f:
        steps = [s for s in map(json.loads, f) if s["kind"] == "train"]
    later = steps[1:] or steps
    phases = {k: statistics.mean(s["seconds"][k] for s in later) for k in later[0]["seconds"]}
    return {
        "seed": seed,
        "updates": len(steps),
        "generated_tokens": steps[-1]["generated_tokens_total"],
        "seconds_per_step": sum(phases.values()),
        "seconds_all_steps": sum(sum(s["seconds"].values()) for s in steps),
        "phases_per_step": phases,
        "peak_rss_mib": peak,
        "accuracy": accuracy(opd, config, os.path.join(cwd, out_dir, "final"), cwd),
    }


def trl_side(opd, config_path, text, seed, work, cwd, env, budget, threads, trainer):
    out = os.path.join(work, f"trl-s{seed}")
    student = os.path.join(work, "student-hf")
    teacher = []
    if trainer == "distill":
        teacher = ["--teacher", os.path.join(cwd, path_in(text, "teacher", "path"))]
    stdout, peak = timed([sys.executable, os.path.join(HERE, "trl_run.py"), "--trainer", trainer,
                          "--config", config_path, "--student", student, *teacher,
                          "--tasks", os.path.join(work, "tasks"), "--out", out,
                          "--seed", str(seed), "--budget", str(budget),
                          "--threads", str(threads), "--opd", opd], cwd, env)
    result = json.loads(stdout.strip().splitlines()[-1])
    with open(os.path.join(out, "result.json")) as f:
        result["seconds_all_steps"] = sum(s["seconds"] for s in json.load(f)["steps"])
    result["peak_rss_mib"] = peak
    return result


def mean_sd(values, digits=2):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def betainc(a, b, x):
    """The regularized incomplete beta function I_x(a, b) (a continued fraction, Lentz)."""
    if x <= 0.0 or x >= 1.0:
        return max(0.0, min(1.0, x))
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log(1 - x)) / a
    c, d, f = 1.0, 0.0, 1.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + num / c if abs(c) > 1e-300 else 1e-300
        f *= c * d
        if abs(1.0 - c * d) < 1e-12:
            break
    return front * (f - 1.0)


def welch(x, y):
    """Welch's t of mean(x) − mean(y), its degrees of freedom and two-sided p."""
    vx, vy = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
    t = (statistics.mean(x) - statistics.mean(y)) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return t, df, betainc(df / 2, 0.5, df / (df + t * t))


def report(rows):
    """The markdown table of both sides and the ratios."""
    phases = ["rollout", "teacher", "train", "optimizer"]
    lines = ["| side | s / step | " + " | ".join(phases) + " | s, all steps | peak RSS MiB | updates | "
             "generated tokens | held-out accuracy | per seed |",
             "|---" * (len(phases) + 8) + "|"]
    for side, results in rows.items():
        cells = [mean_sd([r["seconds_per_step"] for r in results])]
        cells += [mean_sd([r["phases_per_step"][p] for r in results]) for p in phases]
        cells += [mean_sd([r["seconds_all_steps"] for r in results], 1),
                  mean_sd([r["peak_rss_mib"] for r in results], 0),
                  mean_sd([r["updates"] for r in results], 1),
                  mean_sd([r["generated_tokens"] for r in results], 0),
                  mean_sd([r["accuracy"] for r in results], 3),
                  ", ".join(f"{r['accuracy']:.2f}" for r in results)]
        lines.append(f"| {side} | " + " | ".join(cells) + " |")
    speed = (statistics.mean(r["seconds_per_step"] for r in rows["TRL"])
             / statistics.mean(r["seconds_per_step"] for r in rows["opd"]))
    total = (statistics.mean(r["seconds_all_steps"] for r in rows["TRL"])
             / statistics.mean(r["seconds_all_steps"] for r in rows["opd"]))
    memory = (statistics.mean(r["peak_rss_mib"] for r in rows["opd"])
              / statistics.mean(r["peak_rss_mib"] for r in rows["TRL"]))
    lines.append("")
    lines.append(f"TRL's seconds per step / opd's: {speed:.2f}× (all steps: {total:.2f}×); opd's "
                 f"peak memory / TRL's: {memory:.2f}×")
    if len(rows["opd"]) > 1:
        t, df, p = welch([r["accuracy"] for r in rows["opd"]],
                         [r["accuracy"] for r in rows["TRL"]])
        lines.append(f"held-out accuracy, opd − TRL: Welch t = {t:.2f} (df {df:.1f}), p = {p:.3f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cwd", required=True, help="where the run file's relative paths resolve")
    ap.add_argument("--config", default=DEFAULT_CONFIG)
    ap.add_argument("--trainer", choices=["distill", "grpo"], default="distill",
                    help="TRL's trainer: distill for an OPD arm, grpo for the GRPO arm")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="default: CWD/runs/peer-trl")
    ap.add_argument("--opd", default=os.path.join(ROOT, "target/release/opd"))
    ap.add_argument("--report", action="store_true",
                    help="print the table of WORK/compare.json without training")
    args = ap.parse_args()
    cwd = os.path.abspath(args.cwd)
    work = os.path.abspath(args.work or os.path.join(cwd, "runs/peer-trl"))
    os.makedirs(work, exist_ok=True)
    if args.report:
        with open(os.path.join(work, "compare.json")) as f:
            print(report(json.load(f)))
        return
    opd = os.path.abspath(args.opd)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               RAYON_NUM_THREADS=str(args.threads))
    with open(args.config) as f:
        text = f.read()
    config_path = os.path.join(work, "arm.toml")
    with open(config_path, "w") as f:
        f.write(text)
    subprocess.run([opd, "data", "--config", config_path, "--out", os.path.join(work, "tasks")],
                   cwd=cwd, check=True, capture_output=True)
    student = os.path.join(work, "student-hf")
    if not os.path.isdir(student):
        subprocess.run([opd, "export", "--model", path_in(text, "model", "path"), "--out", student],
                       cwd=cwd, check=True, capture_output=True)
    rows = {"opd": [], "TRL": []}
    for seed in range(args.seeds):
        rows["opd"].append(opd_side(opd, text, seed, work, cwd, env))
        print("opd", json.dumps(rows["opd"][-1]), flush=True)
        rows["TRL"].append(trl_side(opd, config_path, text, seed, work, cwd, env, args.budget,
                                    args.threads, args.trainer))
        print("TRL", json.dumps({k: v for k, v in rows["TRL"][-1].items() if k != "steps"}),
              flush=True)
    with open(os.path.join(work, "compare.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n" + report(rows))


if __name__ == "__main__":
    main()
