"""Reference for the GGUF reader tests: dequantizes a few SmolLM2 tensors with the Python `gguf`
package (an independent implementation) and writes their statistics as a JSON fixture.

usage: pip install gguf numpy; python3 scripts/reference/gguf_fixture.py \
         models/SmolLM2-135M-Instruct.Q4_1.gguf crates/policy/tests/fixtures/smollm2_gguf.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

NAMES = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight",
         "blk.29.ffn_down.weight", "output_norm.weight"]


def main():
    reader = GGUFReader(sys.argv[1])
    tensors = {t.name: t for t in reader.tensors}
    out = {"metadata": {
        "llama.block_count": int(reader.fields["llama.block_count"].contents()),
        "llama.embedding_length": int(reader.fields["llama.embedding_length"].contents()),
        "llama.rope.freq_base": float(reader.fields["llama.rope.freq_base"].contents()),
        "tokenizer.ggml.model": reader.fields["tokenizer.ggml.model"].contents(),
        "tokens": len(reader.fields["tokenizer.ggml.tokens"].data),
    }, "tensors": {}}
    for name in NAMES:
        t = tensors[name]
        x = dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
        out["tensors"][name] = {
            "type": t.tensor_type.name,
            "shape": [int(d) for d in reversed(t.shape)],
            "sum": float(x.sum()),
            "sum_sq": float((x * x).sum()),
            "first": [float(v) for v in x[:8]],
            "last": [float(v) for v in x[-8:]],
        }
    with open(sys.argv[2], "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
