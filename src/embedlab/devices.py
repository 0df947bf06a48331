"""Which torch device a stage runs on."""

from __future__ import annotations

import os

import torch

from embedlab.worker_threads import opencv_single_threaded


def launched_rank(devices_per_node: int = 1) -> int:
    """This process's global rank when a DDP launcher started it (Lightning, torchrun, SLURM); else 0.

    torchrun sets RANK and SLURM SLURM_PROCID; Lightning's own launcher sets
    LOCAL_RANK in the processes it starts, and NODE_RANK on each node of a
    multi-node run. Every process but rank 0 trains its part and logs nothing
    (no MLflow run of its own).
    """
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    local, node = (int(os.environ[name]) if os.environ.get(name, "").isdigit() else 0
                   for name in ("LOCAL_RANK", "NODE_RANK"))
    return node * devices_per_node + local


def check_devices(runtime) -> None:
    """Refuse, before any work, a GPU this machine lacks or more GPUs per node than it has (naming the setting)."""
    if torch_device(runtime.device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"runtime.device is {runtime.device} but this machine has no GPU "
                         "(torch.cuda.is_available() is false); use --device auto or cpu")
    if torch_device(runtime.device).type == "cuda" and runtime.devices > torch.cuda.device_count():
        raise ValueError(f"runtime.devices is {runtime.devices} but this machine has {torch.cuda.device_count()} "
                         "GPU(s); set runtime.devices (or --devices) to at most that")


def training_shard(runtime) -> tuple[int, int]:
    """(this process's rank, ranks): each stage's training sampler draws this rank's share of every epoch.

    The stages shard their own training data (Lightning's automatic
    DistributedSampler is off): P×K batches must stay whole, and drip's
    (epoch, index) items need the epoch. Validation runs whole on every
    rank, so its metrics are the same everywhere.
    """
    return launched_rank(runtime.devices), runtime.devices * runtime.num_nodes


def torch_device(device: str = "auto") -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


_LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def lightning_precision(setting: str, device: torch.device | None = None) -> str:
    """Lightning's precision for ``runtime.precision`` on ``device`` (default: the GPU when there is
    one); ``auto`` picks by hardware. fp16 trains with a loss scaler (Lightning's 16-mixed)."""
    if setting == "auto":
        if (device or torch_device()).type != "cuda":
            return "32-true"
        # bf16 where the GPU has it natively (Ampere+); fp16 with a scaler before that (V100, T4).
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    if setting not in _LIGHTNING_PRECISION:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {setting!r}")
    return _LIGHTNING_PRECISION[setting]


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of an inference ``precision`` on ``device``; None: plain fp32.

    ``auto``: bf16 on a GPU that has it natively, fp16 on older GPUs (V100, T4:
    inference needs no loss scaler), fp32 on the CPU (CPU autocast is slower
    than fp32 on most CPUs without AMX). ``bf16`` / ``fp16`` force autocast on
    any device, CPU included.
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def available_cpus() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


MAX_AUTO_WORKERS = 32  # beyond this, prefetched batches cost more shared memory than the workers add


def loader_workers(setting: int | str, device: torch.device, processes: int = 1) -> int:
    """DataLoader worker processes for a ``num_workers`` setting; ``auto`` sizes from the machine.

    With a GPU the workers do all the CPU work (decoding, augmentations: about
    130-350 images/s per core, benchmarks/train_throughput.py --data-only), so
    every core but the one driving the GPU, shared among the ``processes``
    (DDP ranks) of the machine, at most 32. On the CPU the model needs the
    cores too: half of them load data, at most 8.
    """
    if setting == "auto":
        cpus = available_cpus()
        if device.type == "cuda":
            return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, processes) - 1))
        return min(8, cpus // 2)
    workers = int(setting)
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0 or 'auto', got {setting!r}")
    return workers


def pin_memory_for(setting: bool | str, device: torch.device) -> bool:
    """``pin_memory`` ``auto``: on when batches go to a CUDA device (faster, asynchronous copies)."""
    if setting == "auto":
        return device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"pin_memory must be true, false or 'auto', got {setting!r}")


def loader_options(num_workers: int | str, pin_memory: bool | str, prefetch_factor: int | None,
                   device: torch.device, keep_workers: bool = True, processes: int = 1) -> dict:
    """DataLoader keyword arguments for the speed settings of params.yaml, resolved for ``device``.

    ``keep_workers``: keep worker processes alive between epochs (a loader
    iterated once has nothing to keep them for). ``processes``: training
    processes sharing the machine's cores (DDP ranks).
    """
    workers = loader_workers(num_workers, device, processes)
    if workers > 0:  # the workers' image ops: one OpenCV thread each, set here in the parent (worker_threads)
        opencv_single_threaded()
    return {"num_workers": workers, "pin_memory": pin_memory_for(pin_memory, device),
            "prefetch_factor": prefetch_factor if workers > 0 else None,
            "persistent_workers": keep_workers and workers > 0}


def runtime_loader_options(runtime, keep_workers: bool = True) -> dict:
    """loader_options for params.yaml's ``runtime`` section (a config.RuntimeConfig), on its device.

    ``keep_workers=False`` for loaders iterated once per epoch beside another
    (validation): their workers would sit idle through every training epoch,
    holding prefetched batches.
    """
    return loader_options(runtime.num_workers, runtime.pin_memory, runtime.prefetch_factor,
                          torch_device(runtime.device), keep_workers, processes=runtime.devices)


def speed_tags(runtime) -> dict[str, str]:
    """The runtime settings as this machine resolves them, as MLflow tags.

    Tags, not params: they may differ between the runs of one experiment, or
    when a run resumes on another machine. Precision and compile pick the
    kernels, so a result may move in its last digits with them.
    """
    device = torch_device(runtime.device)
    return {
        "embedlab.device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "embedlab.precision": lightning_precision(runtime.precision, device),
        "embedlab.compile": str(runtime.compile).lower(),
        "embedlab.num_workers": str(runtime_loader_options(runtime)["num_workers"]),  # what the loaders get
        "embedlab.devices": str(runtime.devices),
    }
