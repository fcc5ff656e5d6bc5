"""SmolLM2 generation throughput in PyTorch + transformers, loading the same GGUF file (f32):
prefill tokens/s (best of 3, logits of the last position only, as in `generate`) and decode
tokens/s through transformers' `generate` with its KV cache, and the peak resident memory. One configuration per process; prints one JSON line.

usage: python3 benches/peer/generate.py BATCH NEW_TOKENS THREADS
Needs `pip install torch transformers gguf`.
"""
import json
import os
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "Explain in a few sentences why the sky is blue and why sunsets are red."


def main():
    batch, new_tokens, threads = (int(a) for a in sys.argv[1:4])
    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt").input_ids.repeat(batch, 1)
    mask = torch.ones_like(ids)
    config = dict(do_sample=False, pad_token_id=tokenizer.eos_token_id, eos_token_id=None)
    with torch.inference_mode():
        model.generate(ids[:1], attention_mask=mask[:1], max_new_tokens=4, **config)
        # The prefill `generate` runs: the whole prompt, logits of the last position only.
        prefill = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            model(ids, attention_mask=mask, use_cache=True, logits_to_keep=1)
            prefill = min(prefill, time.perf_counter() - started)
        started = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, **config)
        total = time.perf_counter() - started
    generated = (out.shape[1] - ids.shape[1]) * batch
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "batch": batch, "prompt_len": ids.shape[1], "new_tokens": new_tokens,
        "prefill_tok_s": round(ids.numel() / prefill, 1),
        "decode_tok_s": round(generated / max(total - prefill, 1e-9), 1),
        "peak_mb": round(peak_mb),
    }))


if __name__ == "__main__":
    main()
