"""What can be wrong with bytes that arrive on a wire, one class per kind of bad input.

Every class derives from :class:`WireError` (itself a ``ValueError``), so a program's edge can
catch one type, log the message once with the offending id, and count it by class name. Each
message is a single sentence naming what is wrong, e.g.
``tensor 'w3': 12 bytes for shape (2, 2) float32, expected 16``.
"""

from __future__ import annotations

__all__ = [
    "BadSignature",
    "BadTensor",
    "ChunkError",
    "HashMismatch",
    "MalformedMessage",
    "PayloadTooLarge",
    "WireError",
]


class WireError(ValueError):
    """Bad input from a peer: reject the message, never crash the program."""


class MalformedMessage(WireError):
    """The bytes do not parse, or a required field is missing."""


class BadTensor(WireError):
    """A tensor's dtype is unknown, a dimension is negative, or its data has the wrong length."""


class HashMismatch(WireError):
    """A sha256 carried with the data does not match the data."""


class PayloadTooLarge(WireError):
    """A payload (declared or actual) exceeds the receiver's :class:`~proto.limits.WireLimits`."""


class ChunkError(WireError):
    """Chunks of a blob are missing, out of range, inconsistent or belong to another blob."""


class BadSignature(WireError):
    """A message is unsigned, signed by an unknown key, or its signature does not verify."""
