"""The whole GPU benchmark list in one command, for a GPU machine lent for minutes.

    python benchmarks/gpu_session.py --out $OUT                 # the list below, within --budget seconds
    python benchmarks/gpu_session.py --out /tmp/smoke --smoke   # the same rows at toy sizes, on any machine

Runs each benchmark script of this folder as its own process, in priority
order, each under a time limit cut to what is left of ``--budget``, and
writes every row's table (the script's stdout), its command, exit status
and wall time into ``results.md``; stderr goes to ``log.txt``; the machine
(GPU, driver, versions) to the head of ``results.md``. A row that fails or
runs out of time is recorded as such and the next one runs: one lease,
one command, every figure it could get.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, script and arguments, seconds it may take at most, the same row at toy sizes for --smoke)
ROWS = [
    ("embed ViT-B/16 @224 bf16", ["embed_throughput.py", "--images", "10240", "--steps", "20"], 100,
     ["embed_throughput.py", "--tiny"]),
    ("embed drip model eca_nfnet_l1 @160 bf16",
     ["embed_throughput.py", "--model", "eca_nfnet_l1", "--img", "160", "--images", "10240", "--steps", "20"], 100,
     ["embed_throughput.py", "--tiny"]),
    ("train drip full profile, 50k classes", ["train_throughput.py", "--stage", "drip", "--steps", "15", "--warmup", "4"],
     120, ["train_throughput.py", "--stage", "drip", "--tiny", "--workers", "1", "--steps", "2", "--warmup", "1"]),
    ("train drip full profile, 1.5M classes",
     ["train_throughput.py", "--stage", "drip", "--classes", "1500000", "--steps", "10", "--warmup", "4"], 120,
     ["train_throughput.py", "--stage", "drip", "--tiny", "--workers", "1", "--steps", "2", "--warmup", "1",
      "--classes", "3000"]),
    ("search 50k x 1M x 256-d, GPU", ["search.py", "--devices", "cuda"], 100,
     ["search.py", "--queries", "500", "--refs", "20000"]),
    # 50k queries take faiss about 156 s on 16 cores (321 queries/s): a tenth of them says as much.
    ("search 5k x 1M x 256-d, CPU", ["search.py", "--devices", "cpu", "--queries", "5000"], 60,
     ["search.py", "--devices", "cpu", "--queries", "500", "--refs", "20000"]),
    ("train decoder, batch 200", ["decoder_throughput.py", "--steps", "10"], 100,
     ["decoder_throughput.py", "--batch", "8", "--steps", "2", "--workers", "1", "--photos", "16"]),
    ("train triplet ViT-B/16 @224, PxK 16x4", ["train_throughput.py", "--stage", "triplet", "--steps", "10",
                                             "--warmup", "4"], 100,
     ["train_throughput.py", "--stage", "triplet", "--tiny", "--workers", "1", "--steps", "2", "--warmup", "1"]),
    ("train GeM resnet50 @256, 50k classes",
     ["train_throughput.py", "--stage", "gem", "--backbone", "resnet50", "--img", "256", "--classes", "50000",
      "--steps", "10", "--warmup", "4"], 100,
     ["train_throughput.py", "--stage", "gem", "--tiny", "--workers", "1", "--steps", "2", "--warmup", "1"]),
    ("embed ViT-B/16 @224 bf16, compiled", ["embed_throughput.py", "--images", "10240", "--steps", "20", "--compile"],
     150, ["embed_throughput.py", "--tiny", "--compile"]),
]


def machine() -> str:
    lines = [f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", f"python: {platform.python_version()}",
             f"cpus: {os.cpu_count()}"]
    try:
        lines.append(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                     "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout.strip())
    except (OSError, subprocess.TimeoutExpired) as exc:
        lines.append(f"nvidia-smi: {exc}")
    probe = ("import torch, torchvision, timm, pytorch_lightning, numpy, PIL; "
             "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__, "
             "'timm', timm.__version__, 'lightning', pytorch_lightning.__version__, 'numpy', numpy.__version__, "
             "'pillow', PIL.__version__)")
    lines.append(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for results.md and log.txt")
    parser.add_argument("--budget", type=float, default=540, help="seconds for the whole list")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: checks every row runs, on any machine")
    parser.add_argument("--only", nargs="+", help="run only rows whose name contains one of these")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    results, log = args.out / "results.md", args.out / "log.txt"
    deadline = time.monotonic() + args.budget
    with results.open("w") as out, log.open("w") as err:
        out.write(f"# GPU session\n\n```\n{machine()}\n```\n")
        out.flush()
        for name, full, limit, smoke in ROWS:
            if args.only and not any(word in name for word in args.only):
                continue
            left = deadline - time.monotonic()
            command = [sys.executable, str(HERE / (smoke if args.smoke else full)[0]), *(smoke if args.smoke else full)[1:]]
            shown = " ".join(["python", "benchmarks/" + command[1].split("/")[-1], *command[2:]])
            if left < 20:
                out.write(f"\n## {name}\n\nnot run: the session's budget was spent\n")
                continue
            out.write(f"\n## {name}\n\n    {shown}\n\n")
            out.flush()
            err.write(f"\n===== {name}: {shown}\n")
            err.flush()
            start = time.monotonic()
            try:
                done = subprocess.run(command, stdout=out, stderr=err, timeout=min(limit, left), cwd=HERE.parent)
                status = f"exit {done.returncode}"
            except subprocess.TimeoutExpired:
                status = f"killed at its limit of {min(limit, left):.0f} s"
            out.write(f"\n({status}, {time.monotonic() - start:.0f} s wall)\n")
            out.flush()
            print(f"{name}: {status}, {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
