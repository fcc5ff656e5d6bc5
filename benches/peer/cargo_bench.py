"""Builds a Rust bench binary of the workspace with `cargo bench --no-run` and returns its path,
for the peer comparison scripts in this folder."""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rust_binary(package, bench, features=""):
    """The executable of bench target `bench` of `package`, built with `features` (comma list)."""
    out = subprocess.run(
        ["cargo", "bench", "-p", package, "--bench", bench, "--no-run", "--message-format=json"]
        + (["--features", features] if features else []),
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == bench:
            if msg.get("executable"):
                return msg["executable"]
    raise SystemExit(f"{bench} bench binary not found")
