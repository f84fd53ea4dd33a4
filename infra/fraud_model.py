"""The fraud model: a seeded synthetic generator, training, versioned artifacts, the scorer.

Until real chargeback labels exist the model learns from ``generate_transactions``, a
deterministic generator of ordinary customer payments mixed with the fraud patterns we
expect (velocity bursts, night-time cash-outs to new beneficiaries, brand-new customers
paying out what they just topped up, card testing), with label noise so the model cannot
be perfect. ``train`` fits a gradient-boosted tree model on it and measures it on a
stratified holdout.

Artifacts live in one directory per version::

    <models dir>/current                       the version in use (one line)
    <models dir>/fraud-v1-<12 hex>/model.joblib
    <models dir>/fraud-v1-<12 hex>/metrics.json
    <models dir>/fraud-v1-<12 hex>/features.json  FEATURE_NAMES the model was trained on

The version hashes everything that decides the model (generator version, seed, row count,
hyper-parameters, feature names, and the scikit-learn release that fits it, as another
release may fit other trees from the same rows), so the same inputs always give the same
version name and, training being deterministic, the same model. A model fitted by another
scikit-learn release than the running one is not loaded (a pickle is only safe to read
with the release that wrote it): ``ensure_model`` fits a new version instead.
``model.joblib`` is a pickle: only load artifacts this platform wrote itself.

A worker calls ``ensure_model`` once at start and keeps the ``FraudScorer`` for the life of
the process; ``FraudScorer.score`` is synchronous and scores one payment in well under a
millisecond.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib  # type: ignore[import-untyped]  # ships with scikit-learn, untyped
import numpy as np
import sklearn
from numpy.random import PCG64, Generator
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import (
    average_precision_score,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.model_selection import train_test_split
from threadpoolctl import ThreadpoolController

from models.risk import FEATURE_NAMES, PAYMENT_KINDS, RiskFeatures, RiskPolicy

log = logging.getLogger(__name__)

# Bump when generate_transactions changes what it produces: it is part of the version hash.
GENERATOR_VERSION = "synthetic-1"
VERSION_PREFIX = "fraud-v1-"
CURRENT_FILE = "current"
MODEL_FILE = "model.joblib"
METRICS_FILE = "metrics.json"
FEATURES_FILE = "features.json"

DEFAULT_SEED = 7
DEFAULT_COUNT = 20_000
MIN_COUNT = 1_000
HOLDOUT_FRACTION = 0.25

# Boosted trees, not a forest: one-row scoring of a forest costs milliseconds, this a fraction
# of one. Scoring time grows with the number of trees (a few microseconds each); 40 trees
# score as well on the holdout as 120 at a third of the cost. No early stopping, so the
# number of trees does not depend on a validation split.
HYPER_PARAMS: dict[str, Any] = {
    "estimator": "HistGradientBoostingClassifier",
    "max_iter": 40,
    "learning_rate": 0.2,
    "max_leaf_nodes": 15,
    "min_samples_leaf": 40,
    "l2_regularization": 1.0,
    "early_stopping": False,
    "holdout_fraction": HOLDOUT_FRACTION,
}

# Share of rows that belong to each fraud pattern before label noise (about 3.5 % in all),
# and the noise: fraud nobody reported, and legitimate payments charged back anyway.
FRAUD_PATTERNS: dict[str, float] = {
    "velocity_burst": 0.010,
    "night_cash_out": 0.009,
    "new_customer_cash_out": 0.009,
    "card_testing": 0.007,
}
MISSED_FRAUD_RATE = 0.10
FALSE_CHARGEBACK_RATE = 0.004
_CURRENCIES = ("EUR", "USD", "GBP")
_CURRENCY_WEIGHTS = (0.8, 0.12, 0.08)


IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]


class ModelArtifactError(RuntimeError):
    """No usable artifact: none marked current, files missing, or trained on other features."""


# -- synthetic data --------------------------------------------------------------------------------


@dataclass
class _Columns:
    """The generator's rows, column by column; fraud patterns overwrite their own rows."""

    kind: IntArray  # index into PAYMENT_KINDS
    amount: IntArray  # minor units
    hour: IntArray
    velocity: IntArray  # payments in the previous hour
    last_24h: IntArray  # minor units in the previous 24 h
    new_beneficiary: BoolArray
    age: IntArray  # customer age in days


def generate_transactions(seed: int, count: int) -> tuple[list[RiskFeatures], list[int]]:
    """``count`` synthetic payments and their labels (1 = fraud), the same for the same seed."""
    rng = Generator(PCG64(seed))
    patterns = list(FRAUD_PATTERNS)
    weights = [1 - sum(FRAUD_PATTERNS.values()), *FRAUD_PATTERNS.values()]
    # 0 is an ordinary payment, i > 0 the i-th fraud pattern.
    pattern = rng.choice(len(weights), size=count, p=weights)

    cols = _ordinary_payments(rng, count)
    for number, name in enumerate(patterns, start=1):
        _FRAUD_MAKERS[name](rng, np.flatnonzero(pattern == number), cols)

    # A top-up comes from the customer's own card: there is no beneficiary to be new.
    cols.new_beneficiary &= cols.kind != PAYMENT_KINDS.index("topup")
    amount = np.clip(cols.amount, 100, 20_000_000)

    fraud = pattern > 0
    missed = rng.random(count) < MISSED_FRAUD_RATE
    charged_back = rng.random(count) < FALSE_CHARGEBACK_RATE
    labels = np.where(fraud, ~missed, charged_back).astype(np.int64)
    currency = rng.choice(len(_CURRENCIES), size=count, p=_CURRENCY_WEIGHTS)

    features = [
        RiskFeatures(
            kind=PAYMENT_KINDS[cols.kind[i]],
            amount_minor=int(amount[i]),
            currency=_CURRENCIES[currency[i]],
            hour_of_day=int(cols.hour[i]),
            payments_last_hour=int(cols.velocity[i]),
            amount_last_24h_minor=int(cols.last_24h[i]),
            new_beneficiary=bool(cols.new_beneficiary[i]),
            customer_age_days=int(cols.age[i]),
        )
        for i in range(count)
    ]
    return features, [int(label) for label in labels]


def _lognormal_minor(
    rng: Generator, median_major: float | NDArray[np.float64], sigma: float, size: int
) -> IntArray:
    """Log-normal amounts in minor units around a median given in major units."""
    return np.rint(rng.lognormal(np.log(np.multiply(median_major, 100)), sigma, size)).astype(
        np.int64
    )


def _ordinary_payments(rng: Generator, n: int) -> _Columns:
    """Customers going about their lives: daytime, now and then, mostly known destinations."""
    kind = rng.choice(3, size=n, p=(0.4, 0.45, 0.15)).astype(np.int64)
    amount = _lognormal_minor(rng, np.array([60.0, 35.0, 250.0])[kind], 1.1, n)
    # Waking hours around early afternoon UTC, with a thin tail of night owls.
    hour = np.rint(rng.normal(14, 4, n)).astype(np.int64) % 24
    # A few legitimate heavy users (small businesses, people splitting bills) look busy too.
    velocity = rng.poisson(0.3, n) + np.where(rng.random(n) < 0.01, rng.integers(5, 20, n), 0)
    last_24h = np.rint(rng.poisson(1.2, n) * rng.lognormal(np.log(50 * 100), 1.0, n))
    new_beneficiary = rng.random(n) < 0.15
    # Most customers have been with us for months; some joined this week.
    age = np.where(rng.random(n) < 0.05, rng.integers(0, 8, n), rng.exponential(400, n))
    return _Columns(
        kind=kind,
        amount=amount,
        hour=hour,
        velocity=velocity.astype(np.int64),
        last_24h=last_24h.astype(np.int64),
        new_beneficiary=new_beneficiary,
        age=np.rint(age).astype(np.int64),
    )


def _velocity_burst(rng: Generator, rows: IntArray, cols: _Columns) -> None:
    """A taken-over account drained by a script: many transfers/payouts in one hour."""
    n = len(rows)
    cols.kind[rows] = rng.choice([1, 2], size=n, p=(0.6, 0.4))
    cols.amount[rows] = _lognormal_minor(rng, 150.0, 0.8, n)
    cols.velocity[rows] = rng.integers(6, 40, n)
    cols.last_24h[rows] = cols.velocity[rows] * _lognormal_minor(rng, 150.0, 0.5, n)
    cols.new_beneficiary[rows] = rng.random(n) < 0.7
    cols.hour[rows] = rng.integers(0, 24, n)


def _night_cash_out(rng: Generator, rows: IntArray, cols: _Columns) -> None:
    """A large payout at night to a destination the customer never paid before."""
    n = len(rows)
    cols.kind[rows] = rng.choice([1, 2], size=n, p=(0.3, 0.7))
    cols.amount[rows] = _lognormal_minor(rng, 1500.0, 0.7, n)
    cols.hour[rows] = rng.integers(0, 6, n)
    cols.velocity[rows] = rng.poisson(1.0, n)
    cols.new_beneficiary[rows] = rng.random(n) < 0.85


def _new_customer_cash_out(rng: Generator, rows: IntArray, cols: _Columns) -> None:
    """A brand-new customer pays out what they topped up (with stolen cards) hours ago."""
    n = len(rows)
    topped_up = _lognormal_minor(rng, 2000.0, 0.6, n)
    cols.kind[rows] = 2
    cols.age[rows] = rng.integers(0, 3, n)
    cols.last_24h[rows] = topped_up
    cols.amount[rows] = np.rint(topped_up * rng.uniform(0.8, 1.0, n)).astype(np.int64)
    cols.new_beneficiary[rows] = rng.random(n) < 0.6
    cols.velocity[rows] = rng.poisson(2.0, n)
    cols.hour[rows] = rng.integers(0, 24, n)


def _card_testing(rng: Generator, rows: IntArray, cols: _Columns) -> None:
    """Stolen card numbers tried with tiny top-ups, fast, from a young account."""
    n = len(rows)
    cols.kind[rows] = 0
    cols.amount[rows] = rng.integers(100, 600, n)
    cols.velocity[rows] = rng.integers(4, 30, n)
    cols.last_24h[rows] = cols.velocity[rows] * rng.integers(100, 600, n)
    cols.age[rows] = rng.integers(0, 30, n)
    cols.hour[rows] = rng.integers(0, 24, n)


_FRAUD_MAKERS = {
    "velocity_burst": _velocity_burst,
    "night_cash_out": _night_cash_out,
    "new_customer_cash_out": _new_customer_cash_out,
    "card_testing": _card_testing,
}


# -- training --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    version: str
    estimator: HistGradientBoostingClassifier
    metrics: dict[str, Any]


def model_version(seed: int, count: int) -> str:
    """The version name the inputs decide: same inputs, same name."""
    recipe = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "count": count,
        "hyper_params": HYPER_PARAMS,
        "features": list(FEATURE_NAMES),
        "sklearn": sklearn.__version__,
    }
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return VERSION_PREFIX + digest[:12]


def feature_matrix(features: list[RiskFeatures]) -> NDArray[np.float64]:
    return np.array([f.vector() for f in features], dtype=np.float64).reshape(
        -1, len(FEATURE_NAMES)
    )


def train(seed: int = DEFAULT_SEED, count: int = DEFAULT_COUNT) -> TrainedModel:
    """Generate ``count`` rows from ``seed``, fit, and measure on a stratified holdout."""
    if count < MIN_COUNT:
        # Fewer rows leave the holdout with a handful of fraud cases: metrics would be noise.
        raise ValueError(f"train on at least {MIN_COUNT} rows, not {count}")
    features, labels = generate_transactions(seed, count)
    x, y = feature_matrix(features), np.asarray(labels, dtype=np.int64)
    x_train, x_holdout, y_train, y_holdout = train_test_split(
        x, y, test_size=HOLDOUT_FRACTION, stratify=y, random_state=seed
    )
    params = {k: v for k, v in HYPER_PARAMS.items() if k not in ("estimator", "holdout_fraction")}
    estimator = HistGradientBoostingClassifier(**params, random_state=seed)
    estimator.fit(x_train, y_train)
    holdout_scores = estimator.predict_proba(x_holdout)[:, _fraud_column(estimator)]

    threshold = RiskPolicy().model_review_score
    flagged = holdout_scores >= threshold
    metrics: dict[str, Any] = {
        "version": model_version(seed, count),
        "roc_auc": round(float(roc_auc_score(y_holdout, holdout_scores)), 4),
        "average_precision": round(float(average_precision_score(y_holdout, holdout_scores)), 4),
        "review_threshold": threshold,
        "precision_at_review": round(
            float(precision_score(y_holdout, flagged, zero_division=0)), 4
        ),
        "recall_at_review": round(float(recall_score(y_holdout, flagged, zero_division=0)), 4),
        "flagged_rate_at_review": round(float(flagged.mean()), 4),
        "training_rows": len(y_train),
        "holdout_rows": len(y_holdout),
        "fraud_rate": round(float(y.mean()), 4),
        "seed": seed,
        "count": count,
        "generator": GENERATOR_VERSION,
        "hyper_params": HYPER_PARAMS,
        "sklearn_version": sklearn.__version__,
    }
    return TrainedModel(version=metrics["version"], estimator=estimator, metrics=metrics)


def _fraud_column(estimator: HistGradientBoostingClassifier) -> int:
    return int(np.flatnonzero(estimator.classes_ == 1)[0])


# -- artifacts -------------------------------------------------------------------------------------


def save(model: TrainedModel, models_dir: Path, *, make_current: bool = True) -> Path:
    """Write ``<models_dir>/<version>/`` (atomically) and, by default, mark it current.

    A version directory that already holds every file is left alone: the same version is the
    same model, and another worker may be reading it.
    """
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / model.version
    if not _complete(target):
        staging = Path(tempfile.mkdtemp(prefix=f".{model.version}.", dir=models_dir))
        try:
            staging.chmod(0o755)
            joblib.dump(model.estimator, staging / MODEL_FILE)
            _write_json(staging / METRICS_FILE, model.metrics)
            _write_json(staging / FEATURES_FILE, list(FEATURE_NAMES))
            if target.exists() and not _complete(target):
                # Left half-written by hand: a crash cannot, the rename is all or nothing.
                shutil.rmtree(target)
            try:
                staging.rename(target)
            except OSError:
                # Another process renamed the same version into place first.
                if not _complete(target):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if make_current:
        set_current(models_dir, model.version)
    return target


def set_current(models_dir: Path, version: str) -> None:
    """Point ``current`` at ``version``; readers see the old name or the new, never half."""
    _check_version_name(version)
    handle, temp = tempfile.mkstemp(prefix=".current.", dir=models_dir)
    os.fchmod(handle, 0o644)  # mkstemp makes it private; the version name is no secret
    with os.fdopen(handle, "w") as file:
        file.write(version + "\n")
    os.replace(temp, models_dir / CURRENT_FILE)


def load_current(models_dir: Path) -> FraudScorer:
    """The scorer for the version ``current`` names; ``ModelArtifactError`` if unusable."""
    try:
        version = (models_dir / CURRENT_FILE).read_text().strip()
    except FileNotFoundError:
        raise ModelArtifactError(f"no current fraud model in {models_dir}") from None
    return load_version(models_dir, version)


def load_version(models_dir: Path, version: str) -> FraudScorer:
    _check_version_name(version)
    directory = models_dir / version
    if not _complete(directory):
        raise ModelArtifactError(f"fraud model {version} is missing files in {directory}")
    trained_on = json.loads((directory / FEATURES_FILE).read_text())
    if trained_on != list(FEATURE_NAMES):
        raise ModelArtifactError(f"fraud model {version} was trained on other features")
    metrics = json.loads((directory / METRICS_FILE).read_text())
    fitted_by = metrics.get("sklearn_version")
    if fitted_by != sklearn.__version__:
        raise ModelArtifactError(
            f"fraud model {version} was fitted by scikit-learn {fitted_by}, "
            f"this is {sklearn.__version__}"
        )
    estimator = joblib.load(directory / MODEL_FILE)
    return FraudScorer(estimator, version, metrics)


def ensure_model(
    models_dir: Path, seed: int = DEFAULT_SEED, *, count: int = DEFAULT_COUNT
) -> FraudScorer:
    """The current model, trained and saved first if there is none usable (a few seconds)."""
    try:
        return load_current(models_dir)
    except ModelArtifactError as exc:
        log.info("training a fraud model: %s", exc)
    trained = train(seed, count)
    save(trained, models_dir)
    return load_version(models_dir, trained.version)


def _complete(directory: Path) -> bool:
    return all((directory / name).is_file() for name in (MODEL_FILE, METRICS_FILE, FEATURES_FILE))


def _check_version_name(version: str) -> None:
    # ``current`` is a file anyone with access may edit: never let it point outside the dir.
    if not _VERSION_PATTERN.fullmatch(version):
        raise ModelArtifactError(f"not a fraud model version: {version!r}")


_VERSION_PATTERN = re.compile(re.escape(VERSION_PREFIX) + "[0-9a-f]{12}")


def _write_json(path: Path, payload: object) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


# -- scoring ---------------------------------------------------------------------------------------


class FraudScorer:
    """One loaded model, kept for the life of the process.

    ``score`` only reads the model, so threads (e.g. an activity executor) may share it.
    """

    def __init__(
        self, estimator: HistGradientBoostingClassifier, version: str, metrics: dict[str, Any]
    ) -> None:
        self._estimator = estimator
        self._column = _fraud_column(estimator)
        self._threads = ThreadpoolController()
        self.version = version
        self.metrics = metrics

    def score(self, features: RiskFeatures) -> float:
        """The probability that this payment is fraud, 0..1."""
        # A plain one-row array: a DataFrame would cost more than the trees themselves.
        row = np.array([features.vector()], dtype=np.float64)
        # One OpenMP thread: the trees spread one row over every core otherwise, which on
        # two cores doubled the CPU of a score (0.25 -> 0.6 ms) and made the waiting thread
        # spin while the worker had other work. The limit is per calling thread, so it is
        # set here, in whichever executor thread scores.
        with self._threads.limit(limits=1, user_api="openmp"):
            probabilities = self._estimator.predict_proba(row)
        return float(probabilities[0, self._column])
