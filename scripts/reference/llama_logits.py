"""Independent reference for the policy's forward pass: a Llama forward in numpy (float64) on the
GGUF weights *as stored*, with llama.cpp's interleaved RoPE (opd instead un-permutes q/k on load
and uses Hugging Face's rotate_half, so agreement checks both). Writes the top-20 logits at a
few positions of a fixed token sequence as a JSON fixture.

usage: python3 scripts/reference/llama_logits.py models/SmolLM2-135M-Instruct.Q4_1.gguf \
         crates/policy/tests/fixtures/smollm2_logits.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TOKENS = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
POSITIONS = [0, 5, 10, 15]


def main():
    reader = GGUFReader(sys.argv[1])
    field = lambda k: reader.fields[k].contents()
    tensors = {t.name: t for t in reader.tensors}

    def w(name):
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).astype(np.float64).reshape([int(d) for d in reversed(t.shape)])

    n_layer = int(field("llama.block_count"))
    n_head = int(field("llama.attention.head_count"))
    n_kv = int(field("llama.attention.head_count_kv"))
    d = int(field("llama.embedding_length"))
    eps = float(field("llama.attention.layer_norm_rms_epsilon"))
    base = float(field("llama.rope.freq_base"))
    hd = d // n_head
    T = len(TOKENS)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    # interleaved RoPE: pairs (2i, 2i+1) rotated by pos * base^(-2i/hd)
    inv = base ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # x [T, heads, hd]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos[:, None, :] - x1 * sin[:, None, :]
        out[..., 1::2] = x0 * sin[:, None, :] + x1 * cos[:, None, :]
        return out

    emb = w("token_embd.weight")
    x = emb[TOKENS]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(n_layer):
        p = f"blk.{l}."
        h = rms(x, w(p + "attn_norm.weight"))
        q = rope((h @ w(p + "attn_q.weight").T).reshape(T, n_head, hd))
        k = rope((h @ w(p + "attn_k.weight").T).reshape(T, n_kv, hd))
        v = (h @ w(p + "attn_v.weight").T).reshape(T, n_kv, hd)
        group = n_head // n_kv
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", scores, v).reshape(T, d)
        x = x + att @ w(p + "attn_output.weight").T
        h = rms(x, w(p + "ffn_norm.weight"))
        gate = h @ w(p + "ffn_gate.weight").T
        up = h @ w(p + "ffn_up.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w(p + "ffn_down.weight").T
    x = rms(x, w("output_norm.weight"))
    out_w = w("output.weight") if "output.weight" in tensors else emb
    logits = x @ out_w.T
    out = {"tokens": TOKENS, "positions": {}}
    for pos in POSITIONS:
        top = np.argsort(-logits[pos])[:20]
        out["positions"][str(pos)] = {"ids": [int(i) for i in top], "logits": [float(logits[pos, i]) for i in top]}
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
