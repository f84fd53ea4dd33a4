"""The Temporal client every process uses, and the payload codec that encrypts payloads.

With a codec, every payload (workflow and activity inputs and results, signals, queries,
memos) and every failure's message and stack trace leave the process as envelopes
(``infra.envelope``): the Temporal server and its database never see plaintext. Operators
read them in the Web UI through the API's codec endpoints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import temporalio.converter
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DataConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    PayloadCodec,
)
from temporalio.service import RetryConfig

from infra.envelope import EnvelopeCipher
from infra.key_at_hand import in_place_or_thread
from infra.settings import Settings

ENCODING = b"binary/bfc-envelope"


class EnvelopePayloadCodec(PayloadCodec):
    def __init__(self, cipher: EnvelopeCipher) -> None:
        self._cipher = cipher
        self._key_name = cipher.key_name.encode()

    # In place when the data key is at hand (AES-GCM on a payload takes microseconds);
    # in a thread only when Vault must be asked (a new data key, an uncached one). Every
    # payload going through a thread cost the worker a tenth of its CPU in hand-offs.
    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return await in_place_or_thread(
            lambda: self._encode_all(payloads, local_only=True),
            lambda: self._encode_all(payloads),
        )

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return await in_place_or_thread(
            lambda: self._decode_all(payloads, local_only=True),
            lambda: self._decode_all(payloads),
        )

    def _encode_all(self, payloads: Sequence[Payload], local_only: bool = False) -> list[Payload]:
        return [
            Payload(
                metadata={"encoding": ENCODING, "bfc-key": self._key_name},
                data=self._cipher.encrypt(payload.SerializeToString(), local_only=local_only),
            )
            for payload in payloads
        ]

    def _decode_all(self, payloads: Sequence[Payload], local_only: bool = False) -> list[Payload]:
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)  # written before encryption, or not ours
                continue
            plaintext = self._cipher.decrypt(payload.data, local_only=local_only)
            decoded.append(Payload.FromString(plaintext))
        return decoded


# One per process: it keeps a pydantic validator per type, and building one costs about as
# much as the rest of a payment's decoding (schema generation, forward references).
_JSON = PydanticJSONPlainPayloadConverter()


class PlatformPayloadConverter(CompositePayloadConverter):
    """The SDK's default converters with JSON through pydantic, sharing ``_JSON``.

    The worker builds a payload converter for every workflow run; pydantic's stock one
    brings its own empty validator cache each time, so every run paid for building the
    validators of its input and of each activity's result again.
    """

    def __init__(self) -> None:
        super().__init__(
            *(
                _JSON if isinstance(c, JSONPlainPayloadConverter) else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


_PLATFORM_CONVERTER = DataConverter(payload_converter_class=PlatformPayloadConverter)


def platform_data_converter(cipher: EnvelopeCipher | None = None) -> DataConverter:
    """How every process of ours (and every workflow test) turns values into payloads.

    JSON through pydantic: the SDK's default JSON converter rebuilds a dataclass by asking
    ``typing`` for its type hints on every decode, which took 1 ms for a payment's final
    record and 0.25 ms for its input (3-4 ms of worker CPU per payment); pydantic's
    cached validators take 0.01-0.03 ms for the same JSON. The JSON itself is the same but
    for key order, so histories written before read back unchanged. With a ``cipher``,
    every payload and failure is encrypted (``EnvelopePayloadCodec``).
    """
    if cipher is None:
        return _PLATFORM_CONVERTER
    return dataclasses.replace(
        _PLATFORM_CONVERTER,
        payload_codec=EnvelopePayloadCodec(cipher),
        # Failure messages and stack traces can carry business data: encrypt them too.
        failure_converter_class=temporalio.converter.DefaultFailureConverterWithEncodedAttributes,
    )


async def connect_temporal(
    settings: Settings,
    cipher: EnvelopeCipher | None = None,
    retry_config: RetryConfig | None = None,
) -> Client:
    """``retry_config``: how long a call keeps trying an unreachable server before it
    raises (the SDK's default, used where none is given, is up to 10 s)."""
    converter = platform_data_converter(cipher)
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=converter,
        retry_config=retry_config,
    )
