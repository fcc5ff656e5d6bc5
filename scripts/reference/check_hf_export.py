"""Checks that a folder written by `opd export` (or `opd_policy::save`) loads in transformers and
computes what the source GGUF computes, as transformers itself reads that GGUF.

usage: python3 scripts/reference/check_hf_export.py EXPORTED_FOLDER [GGUF_FILE]
Needs `pip install torch transformers gguf accelerate`. Prints the largest logit difference
and whether the tokenizers and chat templates agree; exits non-zero when they do not.
"""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = sys.argv[1]
gguf = sys.argv[2] if len(sys.argv) > 2 else "models/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_dir, gguf_name = gguf.rsplit("/", 1) if "/" in gguf else (".", gguf)

exported = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
reference = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, torch_dtype=torch.float32)
tok_exported = AutoTokenizer.from_pretrained(folder)
tok_reference = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)

messages = [{"role": "user", "content": "What is the capital of France? Answer in 12 words."}]
text = tok_exported.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
text_reference = tok_reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
ids = tok_exported(text, return_tensors="pt").input_ids
ids_reference = tok_reference(text, return_tensors="pt").input_ids

with torch.no_grad():
    a = exported(ids).logits
    b = reference(ids).logits
diff = (a - b).abs().max().item()
scale = b.abs().max().item()
print(f"tokens: {ids.shape[1]}; same ids: {torch.equal(ids, ids_reference)}; same chat text: {text == text_reference}")
print(f"max |logit difference| = {diff:.3e} (logits up to {scale:.1f})")
ok = torch.equal(ids, ids_reference) and text == text_reference and diff < 1e-3 * max(1.0, scale)
sys.exit(0 if ok else 1)
