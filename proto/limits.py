"""How much a receiver accepts from one message, so a peer cannot make it allocate without bound."""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["MiB", "WireLimits"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class WireLimits:
    """Size bounds shared by the tensor and blob codecs.

    Sender and receiver should use the same limits: a sender chunks what a receiver would not
    accept inline, and a receiver refuses anything larger than it is prepared to hold.

    Attributes:
        max_raw_bytes: largest payload after decompression (a serialized bundle).
        inline_bytes: stored (compressed) payloads above this travel as chunks.
        chunk_bytes: size of each chunk but the last.
        max_chunks: most chunks one blob may have.
        max_tensor_elements: most elements in one tensor.
        max_tensors: most tensors in one bundle.
    """

    max_raw_bytes: int = 64 * MiB
    inline_bytes: int = 4 * MiB
    chunk_bytes: int = 1 * MiB
    max_chunks: int = 256
    max_tensor_elements: int = 50_000_000
    max_tensors: int = 10_000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"WireLimits.{f.name} must be an int, got {value!r}")
            if value <= 0:
                raise ValueError(f"WireLimits.{f.name} must be positive, got {value}")
        if self.chunk_bytes > self.inline_bytes:
            raise ValueError(
                f"WireLimits.chunk_bytes ({self.chunk_bytes}) must not exceed "
                f"inline_bytes ({self.inline_bytes})"
            )

    @property
    def max_stored_bytes(self) -> int:
        """Largest stored (compressed) blob: zstd grows incompressible data by under 1/256."""
        return self.max_raw_bytes + self.max_raw_bytes // 128 + 1024
