"""The fraud model: reproducible from its seed, better than chance by a wide margin, and its
artifacts load back to the same scores without retraining."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import sklearn
from threadpoolctl import ThreadpoolController, threadpool_limits

from infra import fraud_model
from infra.fraud_model import (
    FEATURES_FILE,
    METRICS_FILE,
    MODEL_FILE,
    ModelArtifactError,
    TrainedModel,
    ensure_model,
    feature_matrix,
    generate_transactions,
    load_current,
    model_version,
    save,
    train,
)
from infra.settings import Settings
from models.risk import FEATURE_NAMES, RiskFeatures

SEED = 7
COUNT = 5_000  # a 1,250-row holdout with ~40 fraud cases: enough to tell a model from chance

# Holdout ROC AUC floor. Measured with COUNT rows: seeds 0..19 gave 0.88-0.97 (mean 0.93;
# label noise caps it well below 1); the same training on permuted labels or permuted rows
# gave 0.38-0.57. 0.80 sits between the two with room on both sides, so it fails when features
# or labels stop meaning anything, not when a seed is unlucky.
AUC_FLOOR = 0.80


@pytest.fixture(scope="module")
def trained() -> TrainedModel:
    return train(SEED, COUNT)


@pytest.fixture(scope="module")
def sample() -> list[RiskFeatures]:
    """Payments the models never saw, to compare their predictions on."""
    features, _ = generate_transactions(12345, 500)
    return features


def predictions(model: TrainedModel, features: list[RiskFeatures]) -> np.ndarray:
    return np.asarray(model.estimator.predict_proba(feature_matrix(features))[:, 1], dtype=float)


def test_the_generator_is_seeded_and_plausible() -> None:
    features, labels = generate_transactions(SEED, 20_000)
    assert (features, labels) == generate_transactions(SEED, 20_000)
    assert generate_transactions(SEED + 1, 100) != generate_transactions(SEED, 100)
    assert 0.02 <= np.mean(labels) <= 0.05
    x, y = feature_matrix(features), np.asarray(labels)
    night = x[:, FEATURE_NAMES.index("night")]
    velocity = x[:, FEATURE_NAMES.index("payments_last_hour")]
    # The fraud patterns show: fraud happens at night and in bursts far more than the rest.
    assert night[y == 1].mean() > 3 * night[y == 0].mean()
    assert velocity[y == 1].mean() > 5 * velocity[y == 0].mean()
    # Label noise: bursts nobody reported, and quiet daytime payments charged back anyway.
    assert ((velocity > 20) & (y == 0)).any()
    quiet = (velocity == 0) & (night == 0) & (x[:, FEATURE_NAMES.index("new_beneficiary")] == 0)
    assert (quiet & (y == 1)).any()
    assert not any(f.new_beneficiary for f in features if f.kind == "topup")


def test_the_same_seed_gives_the_same_version_predictions_and_bytes(
    trained, sample, tmp_path
) -> None:
    again = train(SEED, COUNT)
    assert again.version == trained.version == model_version(SEED, COUNT)
    assert again.metrics == trained.metrics
    np.testing.assert_array_equal(predictions(again, sample), predictions(trained, sample))
    first, second = save(trained, tmp_path / "a"), save(again, tmp_path / "b")
    for name in (MODEL_FILE, METRICS_FILE, FEATURES_FILE):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_another_seed_or_count_is_another_version() -> None:
    versions = {model_version(SEED, COUNT), model_version(SEED + 1, COUNT)}
    versions.add(model_version(SEED, COUNT + 1))
    assert len(versions) == 3
    assert all(re.fullmatch(r"fraud-v1-[0-9a-f]{12}", v) for v in versions)


def test_the_model_beats_chance_on_the_holdout(trained) -> None:
    metrics = trained.metrics
    assert metrics["roc_auc"] > AUC_FLOOR
    # Fraud is rare, so average precision is judged against the base rate it must beat.
    assert metrics["average_precision"] > 5 * metrics["fraud_rate"]
    assert metrics["training_rows"] + metrics["holdout_rows"] == COUNT
    assert metrics["seed"] == SEED
    assert 0 < metrics["recall_at_review"] <= 1
    assert 0 < metrics["precision_at_review"] <= 1


def test_the_floor_catches_labels_that_mean_nothing(monkeypatch) -> None:
    def with_permuted_labels(seed: int, count: int):
        features, labels = generate_transactions(seed, count)
        return features, np.random.default_rng(0).permutation(labels).tolist()

    monkeypatch.setattr(fraud_model, "generate_transactions", with_permuted_labels)
    assert train(SEED, COUNT).metrics["roc_auc"] < AUC_FLOOR


def test_saved_and_loaded_scores_are_the_same(trained, sample, tmp_path) -> None:
    path = save(trained, tmp_path)
    assert path == tmp_path / trained.version
    assert (tmp_path / "current").read_text().strip() == trained.version
    scorer = load_current(tmp_path)
    assert scorer.version == trained.version
    assert scorer.metrics == trained.metrics
    scores = np.array([scorer.score(f) for f in sample])
    np.testing.assert_allclose(scores, predictions(trained, sample), rtol=0, atol=1e-12)


def test_scores_are_probabilities(trained, sample, tmp_path) -> None:
    save(trained, tmp_path)
    scorer = load_current(tmp_path)
    extremes = [
        RiskFeatures("payout", 10**12, "EUR", 3, 500, 10**13, True, 0),
        RiskFeatures("topup", 100, "EUR", 14, 0, 0, False, 10_000),
    ]
    scores = [scorer.score(f) for f in [*sample, *extremes]]
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores)
    assert scores[-2] > scores[-1]  # a night-time cash-out looks worse than a small top-up


def test_ensure_model_trains_once_then_reuses_the_artifact(monkeypatch, tmp_path) -> None:
    calls: list[tuple[int, int]] = []

    def spy(seed: int, count: int) -> TrainedModel:
        calls.append((seed, count))
        return train(seed, count)

    monkeypatch.setattr(fraud_model, "train", spy)
    first = ensure_model(tmp_path, SEED, count=COUNT)
    model_file = tmp_path / first.version / MODEL_FILE
    written = model_file.stat().st_mtime_ns

    second = ensure_model(tmp_path, SEED, count=COUNT)
    assert calls == [(SEED, COUNT)]
    assert second.version == first.version
    assert model_file.stat().st_mtime_ns == written


def test_ensure_model_replaces_a_model_trained_on_other_features(
    trained, monkeypatch, tmp_path
) -> None:
    # What an upgrade that changes FEATURE_NAMES finds: the current model is another version
    # whose features.json does not match this code's.
    old = dataclasses.replace(trained, version="fraud-v1-0123456789ab")
    save(old, tmp_path)
    (tmp_path / old.version / FEATURES_FILE).write_text('["amount", "hour"]')
    with pytest.raises(ModelArtifactError, match="other features"):
        load_current(tmp_path)

    calls: list[int] = []

    def spy(seed: int, count: int) -> TrainedModel:
        calls.append(seed)
        return train(seed, count)

    monkeypatch.setattr(fraud_model, "train", spy)
    scorer = ensure_model(tmp_path, SEED, count=COUNT)
    assert calls == [SEED]
    assert scorer.version == model_version(SEED, COUNT) != old.version
    assert load_current(tmp_path).version == scorer.version


def test_a_model_fitted_by_another_scikit_learn_is_refitted_under_a_new_version(
    trained, monkeypatch, tmp_path
) -> None:
    """What an upgrade of scikit-learn finds: the pickle of the release before, whose trees
    the new release might not fit alike from the same rows."""
    save(trained, tmp_path)
    metrics_file = tmp_path / trained.version / METRICS_FILE
    metrics = json.loads(metrics_file.read_text())
    metrics_file.write_text(json.dumps({**metrics, "sklearn_version": "0.0.1"}))
    with pytest.raises(ModelArtifactError, match=re.escape("scikit-learn 0.0.1")):
        load_current(tmp_path)

    monkeypatch.setattr(sklearn, "__version__", "99.0.0")
    assert model_version(SEED, COUNT) != trained.version  # the release is part of the name
    refitted = ensure_model(tmp_path, SEED, count=COUNT)
    assert refitted.version == model_version(SEED, COUNT)
    assert refitted.metrics["sklearn_version"] == "99.0.0"


def test_no_current_model_or_a_bad_name_is_an_artifact_error(tmp_path) -> None:
    with pytest.raises(ModelArtifactError, match="no current"):
        load_current(tmp_path)
    (tmp_path / "current").write_text("../../elsewhere\n")
    with pytest.raises(ModelArtifactError, match="not a fraud model version"):
        load_current(tmp_path)


def test_models_live_under_the_stack_unless_configured(monkeypatch, tmp_path) -> None:
    assert Settings(stack_dir=tmp_path).fraud_model_path == tmp_path / "models" / "fraud"
    monkeypatch.setenv("BFC_FRAUD_MODEL_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("BFC_FRAUD_SEED", "11")
    settings = Settings(stack_dir=tmp_path)
    assert settings.fraud_model_path == tmp_path / "elsewhere"
    assert settings.fraud_seed == 11


def openmp_threads() -> list[int]:
    return [i["num_threads"] for i in ThreadpoolController().select(user_api="openmp").info()]


def test_a_score_uses_one_openmp_thread(trained, sample, tmp_path, monkeypatch) -> None:
    """The trees would spread a single row over every core: double the CPU on two cores."""
    save(trained, tmp_path)
    scorer = load_current(tmp_path)
    estimator = scorer._estimator
    seen: list[int] = []
    predict = estimator.predict_proba

    def counting(rows: np.ndarray) -> np.ndarray:
        seen.extend(openmp_threads())
        return np.asarray(predict(rows))

    monkeypatch.setattr(estimator, "predict_proba", counting)
    with threadpool_limits(limits=2, user_api="openmp"):  # what a 2-core worker starts with
        scorer.score(sample[0])
        outside = openmp_threads()
    assert seen and set(seen) == {1}
    assert set(outside) == {2}  # restored for everything else in the process
