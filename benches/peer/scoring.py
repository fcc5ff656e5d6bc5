"""A frozen teacher scoring responses in PyTorch eager + transformers, on the rows
`benches/teacher_scoring.rs` scores: BATCH rows of CONTEXT privileged-context tokens followed by
RESPONSE response tokens (the same pseudo-random ids), under `torch.inference_mode()`.
Two measurements, best of 2 runs each (as opd's): the sampled tokens' log-probs
(`log_softmax(z)[y]` over the response positions, logits kept for those positions only) and the
full logits of the response positions (`[BATCH, RESPONSE, V]`). Prints one JSON line with
response tokens per second and the peak resident memory.

usage: python3 benches/peer/scoring.py BATCH CONTEXT RESPONSE THREADS
Needs `pip install torch transformers gguf`.
"""
import json
import os
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ids(rows, length, vocab, salt):
    """The ids of `benches/scoring_rows.rs`."""
    return [[(b * 7_919 + i * 104_729 + salt) % vocab for i in range(length)] for b in range(rows)]


def best(f):
    times = []
    for _ in range(2):
        started = time.perf_counter()
        f()
        times.append(time.perf_counter() - started)
    return min(times)


def main():
    batch, context, response, threads = (int(a) for a in sys.argv[1:5])
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    contexts, responses = ids(batch, context, vocab, 13), ids(batch, response, vocab, 29)
    sequence = torch.tensor([c + r for c, r in zip(contexts, responses)])
    targets = torch.tensor(responses)

    def logits():
        # The logits that predict the response tokens: positions CONTEXT-1 .. CONTEXT+RESPONSE-2.
        out = model(sequence[:, :-1], logits_to_keep=response).logits
        return out

    autocast = os.environ.get("AUTOCAST") == "bf16"

    def sampled():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            z = logits()
            torch.log_softmax(z, -1).gather(-1, targets.unsqueeze(-1))

    def full():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits()

    sampled_s = best(sampled)
    full_s = best(full)
    tokens = batch * response
    print(json.dumps({
        "batch": batch, "context": context, "response": response,
        "sampled_tok_s": round(tokens / sampled_s, 1), "logits_tok_s": round(tokens / full_s, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
