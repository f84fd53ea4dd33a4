"""The platform's payload converter: JSON through pydantic, validators built once per process.

The worker builds a converter for every workflow run (and another per serialization
context); each must find the validators the earlier ones built.
"""

from __future__ import annotations

from typing import Any

from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import WorkflowSerializationContext

from infra.temporal import PlatformPayloadConverter, platform_data_converter
from models.payment import PaymentRecord, RiskSummary, TimelineEntry

JSON = b"json/plain"


def _json_of(converter: PlatformPayloadConverter) -> PydanticJSONPlainPayloadConverter:
    json = converter.converters[JSON]
    assert isinstance(json, PydanticJSONPlainPayloadConverter)
    return json


def _validators_built(converter: PlatformPayloadConverter) -> int:
    # The SDK keeps one pydantic TypeAdapter per type in an lru_cache; a miss builds one.
    cache: Any = _json_of(converter)._type_adapter
    return int(cache.cache_info().misses)


def _record() -> PaymentRecord:
    return PaymentRecord(
        payment_id="pay_1",
        status="succeeded",
        decline_code=None,
        risk=RiskSummary(band="approve", score=0.12, reasons=[], model_version="v1"),
        review_id=None,
        gateway_reference=None,
        captured_amount=2500,
        timeline=[TimelineEntry("2026-11-26T10:00:00+00:00", "posted", "pay_1:post")],
    )


def test_a_payment_record_survives_the_round_trip() -> None:
    converter = PlatformPayloadConverter()
    record = _record()
    [payload] = converter.to_payloads([record])
    assert payload.metadata["encoding"] == JSON
    assert converter.from_payloads([payload], [PaymentRecord]) == [record]


def test_each_run_s_converter_reuses_the_validators_built_before() -> None:
    first = PlatformPayloadConverter()
    [payload] = first.to_payloads([_record()])
    first.from_payloads([payload], [PaymentRecord])

    # What the worker does for the next run and for a workflow's serialization context.
    second = PlatformPayloadConverter()
    third = second.with_context(WorkflowSerializationContext(namespace="bfc", workflow_id="pay_2"))
    assert isinstance(third, PlatformPayloadConverter)
    for converter in (second, third):
        built = _validators_built(converter)
        assert converter.from_payloads([payload], [PaymentRecord]) == [_record()]
        assert _validators_built(converter) == built, "a validator was built again"


def test_workers_clients_and_tests_build_the_platform_converter() -> None:
    assert platform_data_converter().payload_converter_class is PlatformPayloadConverter
