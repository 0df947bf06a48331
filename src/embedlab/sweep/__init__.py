"""Optuna sweeps of a stage's parameters, tracked in MLflow (``embedlab sweep STAGE``).

One module per concept: ``space`` (the search space in params.yaml),
``stages`` (what each stage's trial trains and optimises), ``pruning``
(Lightning callbacks), ``study`` (storage, budget, recovery), ``runs``
(MLflow parent and trial runs), ``objective`` (one trial), ``best`` (best
parameters, `dvc exp run` command, plots), ``runner`` and ``cli``.
"""
