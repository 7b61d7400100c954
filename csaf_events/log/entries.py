"""The log's plain types: what a record read back looks like, and what reading a log takes.

A leaf: it imports nothing of the store, so the projections can read any log through it
without depending on the log adapters or the node (the adapters depend on it instead).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import NamedTuple, Protocol

Headers = tuple[tuple[str, bytes], ...]


class LogEntry(NamedTuple):
    """A record read back from the log, with its position."""

    partition: int
    offset: int
    key: bytes
    value: bytes | None
    headers: Headers


class Chunk(NamedTuple):
    """Consecutive records of one partition with what folding them needs.

    `headers` are the records' headers where the log has them for free (the embedded log
    decodes them anyway), so the restore can check every record's type and version; None
    where reading them would slow the restore (Kafka: librdkafka builds them per message, a
    fifth of a takeover), which then checks the values alone."""

    next_offset: int  # the offset after the last record
    keys: list[bytes]
    values: list[bytes | None]
    headers: list[Headers] | None = None


def chunked(entries: Iterator[LogEntry], size: int = 5_000) -> Generator[Chunk, None, None]:
    """`read_chunks` for a log whose `read` is cheap already."""
    keys: list[bytes] = []
    values: list[bytes | None] = []
    headers: list[Headers] = []
    last = -1
    for e in entries:
        keys.append(e.key)
        values.append(e.value)
        headers.append(e.headers)
        last = e.offset
        if len(keys) == size:
            yield Chunk(last + 1, keys, values, headers)
            keys, values, headers = [], [], []
    if keys:
        yield Chunk(last + 1, keys, values, headers)


class LogReader(Protocol):
    """What reading a log back takes: both log adapters, and the offline tools' readers."""

    topic: str  # names the log in errors that point at a record

    def read(self, partition: int, start: int = 0, end: int | None = None) -> Iterator[LogEntry]:
        """Records of `partition` from offset `start` up to (excluding) `end`, or the current end."""

    def read_chunks(self, partition: int, start: int = 0,
                    end: int | None = None) -> Generator[Chunk, None, None]:
        """The same records, a list at a time: the restore's way to read, paying per record
        only for what the fold uses. A generator: closing it ends the read (Kafka: frees
        the reader for another)."""

    def end_offset(self, partition: int) -> int:
        """The offset the next appended record of `partition` will get (committed records only)."""

    def generation(self, partition: int) -> str:
        """Identifies this incarnation of the log, so a projection of a re-created log is detected."""
