"""Quiet logs (issue 18): third-party noise filtered where it is emitted, progress bars that say what they iterate,
one summary line per stage (the whole summary stays in the files the stage writes)."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import pytest
import yaml
import torch

from embedlab import log_noise
from embedlab.summary_line import decoder_line, retrieval_line, robustness_line, triplet_line

from conftest import run

# The lines a stage printed before, as they read (a piece of each): none may come back in a quiet run.
NOISE = (
    "Loading faiss", "Could not load library with AVX", "Successfully loaded faiss",  # faiss's loader, 6 lines
    "💡 Tip", "litlogger",  # Lightning's cloud-logger advert
    "LeafSpec",  # Lightning's pytree code on a deprecated torch API
    "smaller than the logging interval", "log_every_n_steps",  # a demo epoch shorter than log_every_n_steps
    "Seed set to", "TPU available: False", "`Trainer.fit` stopped: `max_epochs=",  # Lightning, every run
    "Validating input example against model signature", "Downloading artifacts",  # MLflow logging the model
    "system metrics",  # MLflow's system-metrics monitor starting and stopping
    "v_num",  # the Lightning bar's logger version
)


@pytest.fixture
def restored_logging():
    """quiet_third_party changes process-wide logging and warnings state: put it back afterwards."""
    loggers = {name: logging.getLogger(name) for name in [*log_noise.DROPPED, *log_noise.RAISED]}
    saved = {name: (logger.level, list(logger.filters)) for name, logger in loggers.items()}
    filters, quiet = list(warnings.filters), log_noise._quiet
    root, root_level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.INFO)  # as the CLI runs
    for name, logger in loggers.items():  # as a fresh process has them: earlier tests may have quietened them
        logger.setLevel(logging.NOTSET)
        logger.filters[:] = [f for f in logger.filters if not isinstance(f, log_noise.DropKnownNoise)]
    yield
    root.setLevel(root_level)
    for name, (level, kept) in saved.items():
        loggers[name].setLevel(level)
        loggers[name].filters[:] = kept
    warnings.filters[:] = filters
    warnings._filters_mutated()
    log_noise._quiet = quiet


def _passes(logger_name: str, level: int, message: str) -> bool:
    """Whether a record of ``message`` at ``level`` from logger ``logger_name`` reaches a handler on it."""
    seen: list[str] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: seen.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        logger.log(level, message)
    finally:
        logger.removeHandler(handler)
    return seen == [message]


# (logger, level, message as the library logs it, dropped?)
RECORDS = [
    ("faiss.loader", logging.INFO, "Loading faiss with AVX512 support.", True),
    ("faiss.loader", logging.WARNING, "a faiss warning", False),
    ("pytorch_lightning.utilities.rank_zero", logging.INFO, "💡 Tip: For seamless cloud logging and experiment "
     "tracking, try installing [litlogger](https://pypi.org/project/litlogger/)", True),
    ("pytorch_lightning.utilities.rank_zero", logging.INFO, "TPU available: False, using: 0 TPU cores", True),
    ("pytorch_lightning.utilities.rank_zero", logging.INFO, "`Trainer.fit` stopped: `max_epochs=2` reached.", True),
    ("pytorch_lightning.utilities.rank_zero", logging.INFO, "`Trainer.fit` stopped: No training batches.", False),
    ("pytorch_lightning.utilities.rank_zero", logging.INFO, "GPU available: True (cuda), used: True", False),
    ("pytorch_lightning.trainer.connectors.checkpoint_connector", logging.INFO,
     "`weights_only` was not set, defaulting to `False`.", True),
    ("lightning_fabric.utilities.seed", logging.INFO, "Seed set to 0", True),
    ("lightning_fabric.utilities.seed", logging.INFO, "[rank: 1] Seed set to 0", True),
    ("mlflow.pyfunc", logging.INFO, "Validating input example against model signature", True),
    ("mlflow.pyfunc", logging.WARNING, "an MLflow warning", False),
    ("mlflow.system_metrics.system_metrics_monitor", logging.INFO, "Started monitoring system metrics.", True),
]


def test_each_known_line_is_dropped_by_its_own_logger_and_nothing_else_is(restored_logging):
    for name, level, message, _ in RECORDS:
        assert _passes(name, level, message), f"{name}: {message!r} dropped before the filters are installed"
    log_noise.quiet_third_party()
    for name, level, message, dropped in RECORDS:
        assert _passes(name, level, message) != dropped, (name, message, "passes" if not dropped else "dropped")
    log_noise.quiet_third_party()  # twice (a sweep's trials): one filter per logger
    assert all(sum(isinstance(f, log_noise.DropKnownNoise) for f in logging.getLogger(name).filters) == 1
               for name in log_noise.DROPPED)


def _shown(message: str, module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(message, UserWarning, f"/site-packages/{module.replace('.', '/')}.py", 21,
                               module=module)
    return len(caught) == 1


LEAFSPEC = ("`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
            "treespec.is_leaf()` instead.")
LOG_EVERY = ("The number of training batches (3) is smaller than the logging interval Trainer(log_every_n_steps=10). "
             "Set a lower value for log_every_n_steps if you want to see logs for the training epoch.")


def test_known_warnings_are_ignored_from_the_module_that_raises_them_only(restored_logging):
    log_noise.quiet_third_party()
    assert not _shown(LEAFSPEC, "pytorch_lightning.utilities._pytree")
    assert not _shown(LOG_EVERY, "pytorch_lightning.loops.fit_loop")
    assert _shown(LEAFSPEC, "embedlab.models.backbone")  # the same words from other code still show
    assert _shown("Lightning warns about something else", "pytorch_lightning.loops.fit_loop")


def test_environment_switch(monkeypatch):
    monkeypatch.delenv(log_noise.QUIET_ENV, raising=False)
    assert log_noise.wanted()
    for off in ("0", "false", "no"):
        monkeypatch.setenv(log_noise.QUIET_ENV, off)
        assert not log_noise.wanted()


def test_w_matrix_bars_name_their_view(capsys):
    from torch.utils.data import TensorDataset

    from embedlab.models.backbone import DescriptorModel, DescriptorSpec
    from embedlab.models.centroids import class_centroids
    from embedlab.stages.w_matrix import view_titles

    images, labels = torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.arange(2)
    views = [TensorDataset(images, labels) for _ in range(3)]
    class_centroids(DescriptorModel(DescriptorSpec("test_resnet", 8, 3.0, 32)), views, 2, titles=view_titles(2))
    err = capsys.readouterr().err
    for title in ("W matrix: reference view", "W matrix: augmentation 1/2", "W matrix: augmentation 2/2"):
        assert title in err


# Summaries as the stages return them (from a tiny demo run), trimmed to what their lines read.
TRIPLET = {"phase": "pretrain", "miner": "all", "epochs": 2, "train_loss": 0.13647, "before_valid_eer": 0.5,
           "valid_eer": 0.4444, "before_test_eer": 0.5, "test_eer": 0.625, "valid_n_genuine": 12}
DECODER = {"epochs": 2, "train_loss": 2.4927, "before_cosine_mean": 0.890897, "cosine_mean": 0.895699,
           "before_above_threshold": 0.0, "above_threshold": 0.25, "before_psnr_mean": 14.3585, "psnr_mean": 14.4367,
           "before_ssim_mean": 0.21878, "ssim_mean": 0.21834, "threshold": 0.9954}
GEM = {"step": "gem/imagenet/big", "n_classes": 8, "skipped_training_images": 0, "epochs": 2, "train_loss": 8.778,
       "before_uAP": 0.15431, "uAP": 0.25258, "post_uAP": 0.04524, "neck_uAP": 0.20431, "skipped_images": 2}


@pytest.mark.parametrize("line, expected", [
    (triplet_line("triplet/pretrain", TRIPLET, "reports/triplet/pretrain/metrics.json"),
     "triplet/pretrain: miner all, 2 epochs, train loss 0.136, valid EER 0.5000 -> 0.4444, test EER 0.5000 -> "
     "0.6250; all: reports/triplet/pretrain/metrics.json"),
    (decoder_line("decoder", DECODER, "reports/decoder/metrics.json"),
     "decoder: 2 epochs, train loss 2.493, template cosine 0.8909 -> 0.8957, above threshold 0.0% -> 25.0%, "
     "PSNR 14.36 -> 14.44 dB, SSIM 0.219 -> 0.218; all: reports/decoder/metrics.json"),
    (retrieval_line("gem/imagenet/big", GEM, "reports/gem/imagenet/big/metrics.json"),
     "gem/imagenet/big: 8 classes, 2 epochs, train loss 8.778, μAP 0.1543 -> 0.2526 (post-processed 0.0452; "
     "neck 0.2043), 2 unreadable images skipped; all: reports/gem/imagenet/big/metrics.json"),
    (robustness_line({"baseline/phash": {"all": 0.30811, "meme": 0.26}, "drip/s2": {"all": 0.24422}},
                     "reports/robustness/metrics.json"),
     "robustness: μAP over all edits: baseline/phash 0.3081, drip/s2 0.2442; all: reports/robustness/metrics.json"),
])
def test_summary_lines(line: str, expected: str):
    assert line == expected


def _tiny_drip(project: Path, epochs: int = 1) -> None:
    from embedlab.config import load_params
    from embedlab.stages.init_weights import write_initial_weights

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["drip"].update(epochs=epochs, w_matrix_augmentations=2)
    raw["evaluate"].update(train_descriptors=0)  # no post-processing: fewer sets to embed
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    write_initial_weights(load_params("params.yaml"))


@pytest.mark.slow
def test_a_drip_step_prints_labelled_bars_and_one_summary_line_without_third_party_noise(tiny_project: Path):
    """A real (tiny) drip step through the CLI, as DVC runs it: Lightning training, the W matrix, faiss, the
    scores before and after, MLflow's logged model."""
    _tiny_drip(tiny_project)
    done = run(["embedlab", "drip", "--step", "s1"], tiny_project, EMBEDLAB_QUIET="1")
    said = done.stdout + done.stderr
    for noise in NOISE:
        assert noise not in said, f"third-party noise in the stage's output: {noise!r}"

    report = json.loads((tiny_project / "reports/drip/s1/metrics.json").read_text())
    summary = retrieval_line("drip/s1", report, "reports/drip/s1/metrics.json")
    assert summary.startswith("drip/s1: 16 classes, 1 epoch, train loss ") and "μAP" in summary
    lines = done.stdout.splitlines()
    assert lines.count(summary) == 1 and lines[-1] == summary, done.stdout
    assert not [line for line in lines if line.lstrip().startswith(("{", "}", '"'))], "a JSON dump"

    # Each bar says what it iterates; no bare "W matrix" / "embed" bar is left.
    assert "drip/s1: epoch 1/1" in said  # Lightning's training bar (its own title: "Epoch 0/0")
    for title in ("W matrix: reference view", "W matrix: augmentation 1/2", "W matrix: augmentation 2/2",
                  "embed query (before)", "embed reference (before)", "embed query", "embed reference"):
        assert f"{title}:" in done.stderr, title
    assert not re.search(r"(W matrix|embed): +\d+%", done.stderr), "an unlabelled bar"


@pytest.mark.slow
def test_the_same_step_with_EMBEDLAB_QUIET_0_shows_what_the_filters_hide(tiny_project: Path):
    """The other side of the test above: the noise it looks for is really printed by this stage, and comes back
    when asked for (what docs/tracking.md tells a user to do)."""
    _tiny_drip(tiny_project)
    done = run(["embedlab", "drip", "--step", "s1"], tiny_project, EMBEDLAB_QUIET="0")
    said = done.stdout + done.stderr
    for noise in ("Loading faiss", "Successfully loaded faiss", "💡 Tip", "LeafSpec",
                  "smaller than the logging interval",
                  "Seed set to", "TPU available: False", "`Trainer.fit` stopped: `max_epochs=1` reached",
                  "Validating input example against model signature", "Downloading artifacts",
                  "system metrics"):
        assert noise in said, f"{noise!r} not printed: the quiet test above would pass whatever the filters do"
