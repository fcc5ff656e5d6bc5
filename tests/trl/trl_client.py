"""TRL's own vLLM client against `opd serve`, checked against transformers.

`python tests/trl/trl_client.py OPD_BINARY MODEL.gguf` exports the model with `opd export`,
serves the exported folder with `opd serve`, asks TRL's `VLLMClient.get_sequence_logprobs` (the
call TRL's server and async distillation trainers make) for the teacher log-probs of chat
prompts and answers, and compares every number with transformers' forward of the same folder:
each answer token's log-prob and the top-k log-probs within 1e-4, the top-k ids equal except
where two neighbours tie within that tolerance. With `--train` it then runs two steps of TRL's
`ServerDistillationTrainer` with `opd serve` as the teacher (the same model as the student, so
the loss must stay near zero: a misaligned teacher would not) and reports seconds per step.

TRL's client refuses to start without the `vllm` package (a check at construction); it speaks
plain HTTP, so the check is skipped here and nothing else of the client is changed.
"""

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time

import torch
import trl.generation.vllm_client as vllm_client
from transformers import AutoModelForCausalLM, AutoTokenizer

TOLERANCE = 1e-4

CHATS = [
    ("What is 7 + 5? Give the final answer after ####.", "7 + 5 = 12\n#### 12"),
    ("Name a primary colour.", "Red is a primary colour."),
    ("Write a haiku about rust.", "Orange bloom on steel,\nslow fire eating the old gate,\ntime's quiet hunger."),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sequences(tokenizer):
    """Chat prompts (with the generation prompt) and their answers, as token ids."""
    out, prompt_lengths = [], []
    for question, answer in CHATS:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
            prompt = prompt["input_ids"]
        completion = tokenizer(answer, add_special_tokens=False)["input_ids"]
        out.append(list(prompt) + completion)
        prompt_lengths.append(len(prompt))
    return out, prompt_lengths


def reference(model, sequence):
    """log p(token | tokens before) at every position after the first, from transformers."""
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0].double()
    return torch.log_softmax(logits, dim=-1)


def compare(result, seqs, prompt_lengths, model, k):
    """The largest |difference| of the answer tokens' and of the top-k log-probs, and the
    positions compared; asserts both within TOLERANCE and the top-k ids equal up to ties."""
    worst_actual, worst_top, positions = 0.0, 0.0, 0
    for i, (sequence, start) in enumerate(zip(seqs, prompt_lengths)):
        logp = reference(model, sequence)
        for j, position in enumerate(range(start, len(sequence))):
            row = logp[position - 1]
            token = sequence[position]
            actual = result["actual_logprobs"][i][j][0]
            assert result["actual_token_ids"][i][j] == [token]
            worst_actual = max(worst_actual, abs(actual - row[token].item()))
            values, ids = torch.topk(row, k)
            got_values = result["logprobs"][i][j]
            got_ids = result["logprob_token_ids"][i][j]
            assert len(got_values) == k and len(got_ids) == k
            for r in range(k):
                worst_top = max(worst_top, abs(got_values[r] - values[r].item()))
                if got_ids[r] != ids[r].item():
                    # Only a tie may swap neighbours: the reference's value of the id we got
                    # must equal the value at this rank.
                    assert abs(row[got_ids[r]].item() - values[r].item()) < TOLERANCE, (
                        f"sequence {i} position {position} rank {r + 1}: "
                        f"id {got_ids[r]} against {ids[r].item()}"
                    )
            positions += 1
    assert worst_actual < TOLERANCE, f"answer tokens' log-probs differ by {worst_actual:.2e}"
    assert worst_top < TOLERANCE, f"top-{k} log-probs differ by {worst_top:.2e}"
    return worst_actual, worst_top, positions


def train_two_steps(base_url, folder, seconds):
    """Two steps of TRL's ServerDistillationTrainer, opd serve the teacher."""
    from datasets import Dataset
    from trl.experimental.server_distillation import (
        ServerDistillationConfig,
        ServerDistillationTrainer,
    )

    data = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": q}],
                "completion": [{"role": "assistant", "content": a}],
            }
            for q, a in CHATS
            for _ in range(2)
        ]
    )
    with tempfile.TemporaryDirectory() as out:
        args = ServerDistillationConfig(
            output_dir=out,
            teacher_model_server_url=base_url,
            per_device_train_batch_size=2,
            max_steps=2,
            max_completion_length=16,
            learning_rate=1e-5,
            logging_steps=1,
            report_to=[],
            use_cpu=True,
            save_strategy="no",
        )
        trainer = ServerDistillationTrainer(
            model=folder,
            args=args,
            train_dataset=data,
        )
        start = time.time()
        trainer.train()
        seconds.append((time.time() - start) / 2)
        losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
        # The teacher is the student's own model: aligned, the divergence is near zero (a
        # teacher shifted by one position scores ~1 nat a token).
        assert max(losses) < 0.05, f"the teacher does not match the student it equals: {losses}"
        return losses


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("opd")
    parser.add_argument("gguf")
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    vllm_client.is_vllm_available = lambda *a, **k: True
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "smollm2")
        subprocess.run([args.opd, "export", "--model", args.gguf, "--out", folder], check=True)
        port = free_port()
        server = subprocess.Popen(
            [args.opd, "serve", "--model", folder, "--listen", f"127.0.0.1:{port}",
             "--served-model-name", "smollm2", "--max-logprobs", "100"]
        )
        try:
            base_url = f"http://127.0.0.1:{port}"
            client = vllm_client.VLLMClient(base_url=base_url, connection_timeout=120)
            assert client.model == "smollm2", client.model
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
            seqs, prompt_lengths = sequences(tokenizer)
            for k, chunk in [(100, 0), (5, 2)]:
                start = time.time()
                result = client.get_sequence_logprobs(
                    seqs, prompt_lengths, top_logprobs=k, chunk_size=chunk
                )
                took = time.time() - start
                actual, top, n = compare(result, seqs, prompt_lengths, model, k)
                print(
                    f"top {k:>3}{' in chunks of ' + str(chunk) if chunk else ''}: {n} answer "
                    f"positions, max |Δ| answer token {actual:.1e}, top-k {top:.1e} "
                    f"(transformers, float64 softmax); {took:.2f} s a call"
                )
            if args.train:
                seconds = []
                losses = train_two_steps(base_url, folder, seconds)
                print(f"ServerDistillationTrainer: 2 steps, losses {losses}, {seconds[0]:.1f} s a step")
        finally:
            server.terminate()
            server.wait(timeout=30)
    print("TRL's client and opd serve agree")


if __name__ == "__main__":
    sys.exit(main())
