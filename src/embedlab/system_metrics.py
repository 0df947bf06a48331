"""System metrics of a training run: the run page's "System metrics" tab.

MLflow's own monitor samples CPU, memory, disk and network (psutil), and each
NVIDIA GPU where nvidia-ml-py is installed, every ``tracking.system_metrics_interval``
seconds ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL wins) on a background thread,
and logs them as ``system/*`` metrics. Only the process that logs runs it (DDP
rank 0, which also samples the node's GPUs). The thread is a daemon and is
stopped and joined when the stage's block ends, error or not: it never outlives
the run nor keeps a process alive. Its overhead is one sample and one small
write per interval.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import fluent

from embedlab.config import TrackingConfig


@contextlib.contextmanager
def system_metrics(run_id: str, cfg: TrackingConfig) -> Iterator[None]:
    """Log system metrics into ``run_id`` while the block runs (``tracking.system_metrics``)."""
    # A run MLflow monitors already ($MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING at start_run) gets no second monitor.
    if not cfg.system_metrics or run_id in getattr(fluent, "run_id_to_system_metrics_monitor", {}):
        yield
        return
    # resume_logging: a resumed run's samples go on after its last step instead of overwriting step 0 on.
    monitor = SystemMetricsMonitor(run_id, sampling_interval=cfg.system_metrics_interval, resume_logging=True)
    first_step = monitor._logging_step
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
        if monitor._logging_step == first_step:
            # The thread published nothing: a run shorter than one interval, or a busy store that refused its
            # status check (it then stops quietly). One sample now, so every run shows its system metrics.
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
