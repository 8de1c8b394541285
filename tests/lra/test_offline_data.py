"""A hub dataset on a machine that cannot reach the hub: it fails within seconds, in one
paragraph that names the option taking a local copy. The hub is made unreachable here by
pointing its endpoint at a closed local port, so the test does not depend on the network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _closed_port() -> int:
    with socket.socket() as s:  # bound, never listening: a connection is refused at once
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
            "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}


def test_an_unreachable_hub_fails_fast_and_names_the_local_copy_option(tmp_path):
    code = (
        "import time, datasets\n"
        "from lra.data.hf import DatasetUnavailable, read_split\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    read_split('stanfordnlp/imdb', 'train', ['text', 'label'], 'cache')\n"
        "except DatasetUnavailable as err:\n"
        "    print(f'{time.monotonic() - t:.1f}'); print(err)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    seconds, message = proc.stdout.split("\n", 1)
    assert float(seconds) < 10.0, f"{seconds} s to give up on an unreachable hub"
    assert "cannot be reached" in message and "--data.init_args.dataset PATH" in message


def test_lra_fit_on_a_hub_task_without_the_hub_prints_one_paragraph(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lra.cli", "fit", "--config", str(ROOT / "configs/lra/text.yaml"),
         "--trainer.max_steps", "1"], capture_output=True, text=True, env=_env(), cwd=tmp_path,
        timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 6, out
    assert "--data.init_args.dataset PATH" in out.splitlines()[-1], out
