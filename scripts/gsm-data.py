#!/usr/bin/env python3
"""Writes data/gsm/{train,test}.jsonl: GSM-style word problems with worked solutions.

The problems come from the `gsm_symbolic` templates of reasoning-gym 0.1.25 (Apache-2.0,
PyPI `reasoning-gym`): each template is a GSM8K problem with its numbers and names drawn at
random and its worked solution recomputed. The script downloads the wheel (no install, no
other dependency), loads only the template module and its number helpers, and draws rows
template by template from a fixed seed, so the files are reproducible:

    python3 scripts/gsm-data.py            # writes data/gsm/ (2500 train, 500 test rows)

Rows are opd tasks: `prompt` (the question and the answer format), `reference` (the worked
solution ending `#### N`), `answer` (N). Test rows share templates with training rows but
never a question.
"""

import argparse
import ast
import json
import pathlib
import random
import sys
import tempfile
import types
import zipfile

from pypi_wheel import download_wheel

VERSION = "0.1.25"
PACKAGE = "reasoning_gym/arithmetic/gsm_symbolic"
INSTRUCTION = " Give the final answer after ####."


def load(name: str, source: str):
    """Loads `source` as module `name` without running the package's __init__."""
    module = types.ModuleType(name)
    module.__file__ = name
    sys.modules[name] = module
    exec(compile(source, name, "exec"), module.__dict__)
    return module


def generators(wheel: pathlib.Path):
    """The template functions the package marks as correct (`tasks_ok`), by index."""
    with zipfile.ZipFile(wheel) as z:
        read = lambda path: z.read(path).decode()
        sys.modules["reasoning_gym"] = types.ModuleType("reasoning_gym")
        load("reasoning_gym.utils", read("reasoning_gym/utils.py"))
        tree = ast.parse(read(f"{PACKAGE}/gsm_symbolic.py"))
        ok = next(
            ast.literal_eval(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign) and node.targets[0].id == "tasks_ok"
        )
        found = {}
        for part in ("generators_00_49", "generators_50_99"):
            module = load(f"gsm_{part}", read(f"{PACKAGE}/{part}.py"))
            for name in dir(module):
                if name.startswith("generate_"):
                    found[int(name.removeprefix("generate_"))] = getattr(module, name)
        return {i: found[i] for i in ok}, read("reasoning_gym-%s.dist-info/licenses/LICENSE" % VERSION)


def row(example: dict) -> dict | None:
    """An opd task, or None when the template drew a non-integer answer."""
    answer = example["answer"]
    solution = example["metadata"]["answer_cot"].strip()
    if not answer.lstrip("-").isdigit() or not solution.endswith(f"#### {answer}"):
        return None
    return {"prompt": example["question"] + INSTRUCTION, "reference": solution, "answer": answer}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/gsm", type=pathlib.Path)
    parser.add_argument("--train", default=2500, type=int)
    parser.add_argument("--test", default=500, type=int)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        wheel = download_wheel("reasoning-gym", VERSION, pathlib.Path(tmp))
        templates, license_text = generators(wheel)
    rng = random.Random(args.seed)
    total = args.train + args.test
    rows, seen = [], set()
    # Round-robin over the templates, so every template has its share of both splits.
    while len(rows) < total:
        for index, generate in templates.items():
            task = row(generate(random.Random(rng.getrandbits(64))))
            if task and task["prompt"] not in seen and len(rows) < total:
                seen.add(task["prompt"])
                rows.append(task)
    rng.shuffle(rows)

    args.out.mkdir(parents=True, exist_ok=True)
    for name, part in (("test", rows[: args.test]), ("train", rows[args.test:])):
        with open(args.out / f"{name}.jsonl", "w") as f:
            for task in part:
                f.write(json.dumps(task, ensure_ascii=False) + "\n")
    (args.out / "LICENSE-reasoning-gym").write_text(license_text)
    print(f"wrote {args.train} train and {args.test} test rows from {len(templates)} templates to {args.out}")


if __name__ == "__main__":
    main()
