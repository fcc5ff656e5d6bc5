"""An arm of the `opd-teacher` experiment (docs/results.md) trained by TRL, on the same machine,
with the same job: the reverse-KL OPD arm by TRL's `DistillationTrainer` (`--trainer distill`)
or the GRPO arm (1 question × 8 answers) by its `GRPOTrainer` (`--trainer grpo`):

- the student SmolLM2-135M-Instruct in f32 (`opd export` of the Q4_1 GGUF opd trains), LoRA r16,
  α 32, no dropout, on q, k, v, o, gate, up and down projections;
- the teacher the results harness trained (SFT, its `final/` folder), frozen, in f32;
- the run file's 400 training questions (`opd data`), SmolLM2's chat template;
- distill: 8 questions a step, one answer each of at most 64 tokens at temperature 1,
  full-vocabulary reverse KL (`beta = 1`), token mean; grpo: one question a step, 8 answers of
  at most 64 tokens at temperature 1, rewarded 1 when the number after `####` (else the last
  number) is the answer, advantages over the group scaled by its std, PPO clip 0.2 / 0.2, no KL,
  token mean (`loss_type = "dapo"`); both: Adam(0.9, 0.999, 1e-8), no weight decay, gradient norm
  clipped at 1, learning rate 5e-4 with opd's schedule (linear warmup over 2 steps from half the
  rate, then a cosine over 100 000 steps: constant here), stopped after the step that brings the
  generated tokens to the budget (2 000), as opd's `[budget] generated_tokens`;
- evaluated by `opd eval` on the run file's 100 held-out questions, greedy, 64 tokens: the grader
  and decoding of opd's own runs.

What differs, and cannot be matched: the order of the questions (TRL's sampler and opd's each
draw with their seed), the LoRA initialisation's random draws, and the sampler's random numbers.
TRL's defaults that were changed to match: gradient checkpointing (on by default: off), bf16 (on
by default: f32), the learning rate's warmup (from 0 by default: opd's schedule).

Each step is split as opd splits its own: rollout (TRL's `_generate`: `transformers.generate`),
teacher (the teacher backbone's forward), train (the student's forward, both heads' chunked
projection and the loss, and the backward), optimizer (clipping and Adam, what the step takes
besides). Peak memory is the process's maximum resident set.

usage: python3 benches/peer/trl_run.py --config RUN.toml --student DIR [--teacher DIR]
       --tasks DIR --out DIR [--trainer distill|grpo] [--seed 0] [--budget 2000] [--threads 2]
       [--opd PATH]
Needs `pip install torch transformers trl peft`. Prints one JSON line; writes it to OUT/result.json.
"""
import argparse
import json
import math
import os
import re
import resource
import subprocess
import time


def final_number(text):
    """The number after the last `####`, else the last number: opd's `final_number`."""
    numbers = lambda t: [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?", t)]
    at = text.rfind("####")
    found = numbers(text[at + 4:]) if at >= 0 else numbers(text)
    if not found:
        return None
    return found[0] if at >= 0 else found[-1]


def correct(completions, answer, **_):
    """GRPO's reward: 1 when the completion's final number is the task's answer, else 0."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(final_number(t) == float(a)) for t, a in zip(texts, answer)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="the opd run file of the arm (for opd eval)")
    ap.add_argument("--student", required=True, help="Hugging Face folder of the student")
    ap.add_argument("--teacher", help="Hugging Face folder of the teacher (distill)")
    ap.add_argument("--trainer", choices=["distill", "grpo"], default="distill")
    ap.add_argument("--tasks", required=True, help="folder with train.jsonl (opd data)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=2000, help="generated tokens")
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--opd", default="opd", help="the opd binary, for the evaluation")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from torch.optim.lr_scheduler import LambdaLR
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer, GRPOConfig, GRPOTrainer

    with open(os.path.join(args.tasks, "train.jsonl")) as f:
        tasks = [json.loads(line) for line in f if line.strip()]
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": t["prompt"]}], "answer": t["answer"]} for t in tasks]
    )
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    teacher = None
    if args.trainer == "distill":
        teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32)
        teacher.eval()

    seconds = {"rollout": 0.0, "teacher": 0.0, "train": 0.0, "optimizer": 0.0}
    steps = []  # per optimizer step: its seconds by phase and generated tokens

    base = DistillationTrainer if args.trainer == "distill" else GRPOTrainer

    class Timed(base):
        """The trainer with each phase of a step timed and its generated tokens counted."""

        generated = 0

        def _generate(self, prompts):
            start = time.perf_counter()
            out = super()._generate(prompts)
            seconds["rollout"] += time.perf_counter() - start
            self.generated += sum(len(c) for c in out[1])
            return out

        def _get_last_hidden_state(self, model, *a, **k):
            if teacher is None or model is not teacher:
                return super()._get_last_hidden_state(model, *a, **k)
            start = time.perf_counter()
            out = super()._get_last_hidden_state(model, *a, **k)
            seconds["teacher"] += time.perf_counter() - start
            return out

        def training_step(self, model, inputs, num_items_in_batch):
            start = time.perf_counter()
            before = seconds["rollout"] + seconds["teacher"]
            out = super().training_step(model, inputs, num_items_in_batch)
            elapsed = time.perf_counter() - start
            seconds["train"] += elapsed - (seconds["rollout"] + seconds["teacher"] - before)
            return out

        def create_scheduler(self, num_training_steps, optimizer=None):
            # opd's schedule (crates/trainers/src/schedule.rs) over its run file's 100 000 steps.
            total, warmup, floor = 100_000, 2, 0.1

            def factor(s):
                if s < warmup:
                    return (s + 1) / warmup
                p = min(1.0, (s - warmup) / max(1, total - warmup - 1))
                return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))

            self.lr_scheduler = LambdaLR(optimizer or self.optimizer, factor)
            return self.lr_scheduler

    class Budget(TrainerCallback):
        """Times each optimizer step and stops after the one that reaches the token budget."""

        def on_step_begin(self, a, state, control, **kw):
            self.start = time.perf_counter()
            self.before = dict(seconds)

        def on_step_end(self, a, state, control, **kw):
            total = time.perf_counter() - self.start
            phases = {k: seconds[k] - self.before[k] for k in seconds}
            phases["optimizer"] = total - sum(phases.values())
            seconds["optimizer"] += phases["optimizer"]
            steps.append({"seconds": total, "phases": phases, "generated_total": trainer.generated})
            if trainer.generated >= args.budget:
                control.should_training_stop = True

    common = dict(
        output_dir=os.path.join(args.out, "trl"),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        max_completion_length=64,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        learning_rate=args.learning_rate,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=10_000,
        bf16=False,
        gradient_checkpointing=False,
        disable_dropout=True,
        use_cpu=True,
        seed=args.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
    )
    if args.trainer == "distill":
        config = DistillationConfig(beta=1.0, **common)
    else:
        config = GRPOConfig(
            num_generations=8,
            beta=0.0,
            epsilon=0.2,
            epsilon_high=0.2,
            scale_rewards="group",
            loss_type="dapo",
            **common,
        )
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    shared = dict(
        model=student,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[Budget()],
    )
    if args.trainer == "distill":
        trainer = Timed(teacher_model=teacher, **shared)
    else:
        trainer = Timed(reward_funcs=[correct], **shared)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    final = os.path.join(args.out, "final")
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(final, safe_serialization=True)
    tokenizer.save_pretrained(final)
    evaluation = subprocess.run(
        [args.opd, "eval", "--config", args.config, "--model", final, "--max-new-tokens", "64"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    accuracy = float(re.search(r"avg@1 ([0-9.]+)", evaluation).group(1))
    # Steps after the first (the first pays for allocations on both sides).
    later = steps[1:] or steps
    result = {
        "seed": args.seed,
        "updates": len(steps),
        "generated_tokens": trainer.generated,
        "train_seconds": train_seconds,
        "seconds_per_step": sum(s["seconds"] for s in later) / len(later),
        "phases_per_step": {k: sum(s["phases"][k] for s in later) / len(later) for k in seconds},
        "peak_rss_mib": peak_mib,
        "accuracy": accuracy,
        "steps": steps,
    }
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}))


if __name__ == "__main__":
    main()
