"""PyTorch side of the divergence comparison: the same computations as benches/common.rs.

The full-vocabulary JSD is TRL's `generalized_jsd_loss` formula written out (log-softmax of
both, mixture by logsumexp of the stacked, weighted log-probs, `kl_div(log_target=True)`),
β = 1 its reverse-KL branch. Top-k and sampled-token follow the same algorithms as opd.

usage: divergences.py KIND N V REPEATS THREADS   -> one JSON line (time: median ms; peak_mb:
resident-set high-water mark during the runs minus the resident set with the inputs allocated)
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F


def status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(field)


def generalized_jsd(student_logits, teacher_logits, beta):
    s = F.log_softmax(student_logits, dim=-1)
    t = F.log_softmax(teacher_logits, dim=-1)
    if beta == 1.0:
        return F.kl_div(t, s, reduction="none", log_target=True).sum(-1)
    b = torch.tensor(beta, dtype=s.dtype)
    m = torch.logsumexp(torch.stack([s + torch.log(1 - b), t + torch.log(b)]), dim=0)
    kl_t = F.kl_div(m, t, reduction="none", log_target=True)
    kl_s = F.kl_div(m, s, reduction="none", log_target=True)
    return (b * kl_t + (1 - b) * kl_s).sum(-1)


def top_k_reverse_kl(student_logits, teacher_logits, k):
    s = F.log_softmax(student_logits, dim=-1)
    t = F.log_softmax(teacher_logits, dim=-1)
    ids = t.topk(k, dim=-1).indices

    def buckets(x):
        removed = x.scatter(-1, ids, float("-inf"))
        return torch.cat([x.gather(-1, ids), torch.logsumexp(removed, -1, keepdim=True)], -1)

    sb, tb = buckets(s), buckets(t)
    return (sb.exp() * (sb - tb)).sum(-1)


def sampled_k3(student_logits, teacher_logits, ids):
    s = F.log_softmax(student_logits, dim=-1).gather(-1, ids[:, None])[:, 0]
    t = F.log_softmax(teacher_logits, dim=-1).gather(-1, ids[:, None])[:, 0]
    r = s - t
    return torch.exp(-r) - 1 + r


def step(kind, student, teacher, ids):
    student = student.detach().requires_grad_(True)
    if kind == "full-jsd0.5":
        per = generalized_jsd(student, teacher, 0.5)
    elif kind == "full-reverse-kl":
        per = generalized_jsd(student, teacher, 1.0)
    elif kind == "topk64-reverse-kl":
        per = top_k_reverse_kl(student, teacher, 64)
    elif kind == "sampled-k3":
        per = sampled_k3(student, teacher, ids)
    else:
        raise SystemExit(f"unknown kind {kind}")
    per.mean().backward()
    return student.grad


def main():
    kind, n, v, repeats, threads = sys.argv[1], *map(int, sys.argv[2:6])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    student = torch.randn(n, v) * 3
    teacher = torch.randn(n, v) * 3
    ids = torch.randint(0, v, (n,))
    step(kind, student, teacher, ids)  # warm-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status_kb("VmRSS:")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        grad = step(kind, student, teacher, ids)
        times.append((time.perf_counter() - start) * 1e3)
        del grad
    peak = status_kb("VmHWM:") - base
    times.sort()
    print(json.dumps({"impl": "torch", "kind": kind, "n": n, "v": v,
                      "ms": round(times[len(times) // 2], 1), "peak_mb": round(peak / 1024, 1)}))


if __name__ == "__main__":
    main()
