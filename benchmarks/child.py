"""Run a measurement in a fresh Python process (its own peak memory) and read the JSON line it prints last."""

from __future__ import annotations

import json
import subprocess
import sys


def child_json(code: str, *args: object) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
