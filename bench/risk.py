"""Fraud scoring cost: one payment at a time, as the ``score_payment`` activity scores it.

In one run, on the same synthetic data and holdout:

- the chosen model (``infra.fraud_model``: gradient-boosted trees) through ``FraudScorer.score``;
- BASELINE: a standardised LogisticRegression, the cheapest sensible model, scored the same
  way (one numpy row per call);
- the whole decision as the activity makes it: ``vector`` + ``score`` + ``assess``;
- ``ensure_model`` from nothing (train + save + load into an empty directory), which is what
  a worker pays once at its first start.

Each scorer is warmed up, then called ``--calls`` times; p50/p99 are per call. Holdout ROC
AUC is printed next to the timings, so a faster model that scores worse shows as such.

    .venv/bin/python -m bench.risk [--calls N] [--seed N] [--count N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from infra.fraud_model import (
    DEFAULT_COUNT,
    DEFAULT_SEED,
    HOLDOUT_FRACTION,
    ensure_model,
    feature_matrix,
    generate_transactions,
)
from models.risk import RiskFeatures, RiskPolicy, assess


def _timings_us(call: Callable[[RiskFeatures], object], rows: list[RiskFeatures]) -> np.ndarray:
    for features in rows[:200]:
        call(features)
    spent = []
    for features in rows:
        started = time.perf_counter_ns()
        call(features)
        spent.append(time.perf_counter_ns() - started)
    return np.array(spent) / 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as models_dir:
        started = time.perf_counter()
        scorer = ensure_model(Path(models_dir), args.seed, count=args.count)
        cold_start = time.perf_counter() - started

    # The baseline learns from exactly the chosen model's training rows.
    features, labels = generate_transactions(args.seed, args.count)
    x, y = feature_matrix(features), np.asarray(labels)
    x_train, x_holdout, y_train, y_holdout = train_test_split(
        x, y, test_size=HOLDOUT_FRACTION, stratify=y, random_state=args.seed
    )
    baseline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    baseline.fit(x_train, y_train)
    baseline_auc = roc_auc_score(y_holdout, baseline.predict_proba(x_holdout)[:, 1])

    def baseline_score(f: RiskFeatures) -> float:
        return float(baseline.predict_proba(np.array([f.vector()]))[0, 1])

    policy = RiskPolicy()

    def decide(f: RiskFeatures) -> object:
        return assess(f, scorer.score(f), scorer.version, policy)

    rows, _ = generate_transactions(args.seed + 1, args.calls)
    results = [
        ("BASELINE LogisticRegression", baseline_score, baseline_auc),
        (f"{scorer.metrics['hyper_params']['estimator']}", scorer.score, scorer.metrics["roc_auc"]),
        ("  + vector + assess (activity)", decide, None),
    ]
    print(f"fraud scoring, one row per call, {args.calls} calls, training seed {args.seed}")
    print(f"{'scorer':<34} {'p50 µs':>8} {'p99 µs':>8} {'holdout AUC':>12}")
    for name, call, auc in results:
        spent = _timings_us(call, rows)
        auc_text = f"{auc:.4f}" if auc is not None else ""
        p50, p99 = np.percentile(spent, 50), np.percentile(spent, 99)
        print(f"{name:<34} {p50:>8.0f} {p99:>8.0f} {auc_text:>12}")
    print(
        f"ensure_model from nothing ({args.count} rows: generate, train, save, load): "
        f"{cold_start:.2f} s · model {scorer.version}"
    )


if __name__ == "__main__":
    main()
