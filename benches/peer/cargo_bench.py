"""Builds a Rust bench binary of the workspace with `cargo bench --no-run` and returns its path,
and runs one configuration of a bench or peer script, for the comparison scripts in this folder."""
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


def run_json(cmd, env):
    """Runs `cmd` from the repository root and returns the JSON object on its last stdout line;
    exits with its stderr when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
