"""The one exception hierarchy of streamrec.

Adapters translate library errors (confluent-kafka, redis-py, torch.distributed, OS) into these
at the point where they call the library, so callers never need to import a client library to
handle a failure::

    StreamrecError
    ├── ConfigError              a setting is missing, malformed or out of range (exit code 2)
    ├── InvalidEvent             an event breaks the contract (.code, .detail)
    ├── InvalidExample           a training-example message cannot be decoded
    ├── SourceError              a replay file cannot be read
    ├── ServiceError             a backing service failed
    │   ├── BrokerError          Kafka
    │   │   ├── DeliveryError        produced messages not acknowledged (.failed)
    │   │   ├── BackpressureTimeout  the producer queue stayed full
    │   │   └── RecordRefused        the broker refuses this record for good (.error)
    │   ├── StoreError           Redis
    │   └── EmbeddedServiceError an embedded broker or Redis did not start
    └── CheckpointError          a checkpoint cannot be written or read
        └── CorruptCheckpoint    it failed verification
"""

from __future__ import annotations


class StreamrecError(Exception):
    """Base class of every error streamrec raises on purpose."""


class ConfigError(StreamrecError):
    """A setting is missing, malformed or out of range."""


class InvalidEvent(StreamrecError):
    """An event violates the contract.

    ``code`` is a stable machine-readable reason (``missing_field``, ``wrong_type``, ...) that is
    used as a metric label and as the DLQ header; ``detail`` is the human-readable explanation.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class InvalidExample(StreamrecError):
    """A ``training-examples`` message is in neither wire form, or malformed
    (:func:`streaming.contract.examples.decode_example`)."""


class SourceError(StreamrecError):
    """An input file for replay cannot be read (absent, unreadable, unknown format)."""


class ServiceError(StreamrecError):
    """A backing service (Kafka, Redis, an embedded process) failed."""


class BrokerError(ServiceError):
    """Kafka failed: unreachable, rejected a request, or could not deliver."""


class DeliveryError(BrokerError):
    """Some produced messages were not acknowledged by the broker."""

    def __init__(self, message: str, failed: int) -> None:
        super().__init__(message)
        self.failed = failed


class BackpressureTimeout(BrokerError):
    """The producer queue stayed full for longer than the allowed blocking time."""


class RecordRefused(BrokerError):
    """The record can never be produced as it is (larger than the broker's or the topic's
    ``message.max.bytes``, or invalid for the topic); retrying it cannot succeed."""

    def __init__(self, message: str, error: str) -> None:
        super().__init__(message)
        self.error = error


class StoreError(ServiceError):
    """Redis failed: unreachable, authentication, or a command error."""


class EmbeddedServiceError(ServiceError):
    """An embedded broker or Redis process did not start or did not become healthy."""


class CheckpointError(StreamrecError):
    """A checkpoint cannot be written or read."""


class CorruptCheckpoint(CheckpointError):
    """A checkpoint failed verification (missing file, sha256 mismatch, bad manifest)."""
