"""One SFT step of SmolLM2 in PyTorch eager + transformers, on the same GGUF file (f32) and the
same token ids as `benches/peer_sft_step.rs`: forward with the causal-LM loss (NLL of the T − 1
next-token predictions of each T-token row), backward, AdamW step. One configuration per
process; prints one JSON line with the mean time of each phase over the measured steps (after
one warm-up step), the loss before any update, tokens/s (B·T per step) and the peak resident
memory.

usage: python3 benches/peer/sft_step.py BATCH SEQ_LEN THREADS [STEPS]
With LORA_RANK=r in the environment only LoRA adapters of rank r (alpha 32, every projection,
through peft) train, as `OPD_LORA_RANK` in the Rust bench; with AUTOCAST=bf16 the forward runs
under `torch.autocast("cpu", dtype=torch.bfloat16)` (what a PyTorch user switches on for bf16
products; the backward follows the forward's dtypes). With PROFILE=1 in the environment, one more step runs under torch.profiler and its ten largest
ops by self CPU time go to stderr.
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


def row(b, length, vocab):
    return [(b * 7_919 + i * 104_729 + 13) % vocab for i in range(length)]


def main():
    batch, length, threads = (int(a) for a in sys.argv[1:4])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=GGUF, torch_dtype=torch.float32)
    rank = int(os.environ.get("LORA_RANK", "0"))
    if rank:
        from peft import LoraConfig, get_peft_model
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=32, lora_dropout=0.0,
                                                 target_modules=targets))
    autocast = os.environ.get("AUTOCAST") == "bf16"
    model.train()
    vocab = model.config.vocab_size
    ids = torch.tensor([row(b, length, vocab) for b in range(batch)])
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5, weight_decay=1e-4)  # burn's default
    forward = backward = optim = 0.0
    loss_value = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        t_forward = time.perf_counter() - started
        started = time.perf_counter()
        loss.backward()
        t_backward = time.perf_counter() - started
        started = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t_optim = time.perf_counter() - started
        print(f"step {step}: forward {t_forward:.2f} s, backward {t_backward:.2f} s, "
              f"AdamW {t_optim:.2f} s", file=sys.stderr)
        if step == 0:
            loss_value = loss.item()
        else:
            forward += t_forward / steps
            backward += t_backward / steps
            optim += t_optim / steps
    if os.environ.get("PROFILE"):
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10),
              file=sys.stderr)
    total = forward + backward + optim
    print(json.dumps({
        "batch": batch, "seq_len": length, "forward_s": round(forward, 3),
        "backward_s": round(backward, 3), "optimizer_s": round(optim, 3),
        "step_s": round(total, 3), "tok_s": round(batch * length / total, 1),
        "loss": round(loss_value, 4),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))


if __name__ == "__main__":
    main()
