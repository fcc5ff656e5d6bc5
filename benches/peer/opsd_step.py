"""The training part of one OPSD step of SmolLM2 in PyTorch eager + transformers, replaying the
shapes `benches/opsd_step.rs` reports: the frozen teacher's forward (no grad) over
ROWS × (TEACHER_CONTEXT + RESPONSE) tokens, the student's forward over
ROWS × (STUDENT_CONTEXT + RESPONSE), the generalized JSD (β = 0.5, full vocabulary, token mean)
on the response positions, backward, and an AdamW step. Prints one JSON line with the mean
seconds of each phase over the measured steps (after one warm-up step) and the peak memory.

With VOCAB, the model is SmolLM2's shape with a VOCAB-token vocabulary and random weights.

usage: python3 benches/peer/opsd_step.py ROWS STUDENT_CONTEXT TEACHER_CONTEXT RESPONSE THREADS [STEPS] [VOCAB]
Needs `pip install torch transformers gguf`.
"""
import copy
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ids(rows, length, vocab, salt):
    return torch.tensor([[(b * 7_919 + i * 104_729 + salt) % vocab for i in range(length)]
                         for b in range(rows)])


def jsd(student, teacher, beta=0.5):
    """Generalized JSD per position from logits [N, V] (TRL's `generalized_jsd_loss`)."""
    s = F.log_softmax(student, -1)
    t = F.log_softmax(teacher, -1)
    m = torch.logsumexp(torch.stack([s + math.log(1 - beta), t + math.log(beta)]), dim=0)
    kl_t = F.kl_div(m, t, reduction="none", log_target=True).sum(-1)
    kl_s = F.kl_div(m, s, reduction="none", log_target=True).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s


def main():
    rows, c_s, c_t, response, threads = (int(a) for a in sys.argv[1:6])
    steps = int(sys.argv[6]) if len(sys.argv) > 6 else 3
    torch.set_num_threads(threads)
    student = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, torch_dtype=torch.float32)
    if len(sys.argv) > 7:
        config = student.config
        config.vocab_size = int(sys.argv[7])
        torch.manual_seed(0)
        student = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    teacher = copy.deepcopy(student).eval()
    student.train()
    vocab = student.config.vocab_size
    answer = ids(rows, response, vocab, 13)
    student_ids = torch.cat([ids(rows, c_s, vocab, 17), answer], 1)
    teacher_ids = torch.cat([ids(rows, c_t, vocab, 19), answer], 1)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5, weight_decay=0.0)
    teacher_s = train_s = optim_s = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        with torch.no_grad():
            t_logits = teacher(input_ids=teacher_ids).logits[:, c_t - 1:-1]
        t_teacher = time.perf_counter() - started
        started = time.perf_counter()
        s_logits = student(input_ids=student_ids).logits[:, c_s - 1:-1]
        loss = jsd(s_logits.reshape(-1, vocab), t_logits.reshape(-1, vocab)).mean()
        loss.backward()
        t_train = time.perf_counter() - started
        started = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t_optim = time.perf_counter() - started
        print(f"step {step}: teacher {t_teacher:.2f} s, student fwd+bwd {t_train:.2f} s, "
              f"AdamW {t_optim:.2f} s", file=sys.stderr)
        if step > 0:
            teacher_s += t_teacher / steps
            train_s += t_train / steps
            optim_s += t_optim / steps
    print(json.dumps({
        "teacher_s": round(teacher_s, 3), "train_s": round(train_s, 3),
        "optimizer_s": round(optim_s, 3),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
