"""The API server's audit log, read as it grows. A whole test session's log is tens of MB, and
tests ask for it often (a mark before they act, the events since after, some in a polling
loop): parsing all of it each time cost seconds per call late in a session. Here each call reads
only the bytes written since the last one, to find where its lines start, and parses only the
events it is asked for."""

from __future__ import annotations

import array
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload


class AuditLog:
    """Where each complete line of the log at `path` starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # tests read it from several threads
        # Invariant: _starts[i] is the byte offset of line i, _end the offset just after the
        # last complete line read (a line being written, with no newline yet, is not a line).
        self._starts = array.array("q")
        self._end = 0

    def events(self) -> AuditEvents:
        """Every event logged so far: a snapshot, as a sequence parsed on demand."""
        with self._lock:
            if not self.path.exists():
                return AuditEvents(self.path, array.array("q"), 0)
            with self.path.open("rb") as log:
                size = log.seek(0, 2)
                if size < self._end:  # marks taken before would index another log
                    raise AssertionError(f"{self.path} shrank from {self._end} to {size} bytes: "
                                         "rotated or replaced (the launcher asks for neither)")
                log.seek(self._end)
                data = log.read(size - self._end)
            complete = data.rfind(b"\n") + 1
            position = 0
            while position < complete:
                newline = data.index(b"\n", position)
                if data[position:newline].strip():  # (blank lines are no events)
                    self._starts.append(self._end + position)
                position = newline + 1
            self._end += complete
            return AuditEvents(self.path, self._starts[:], self._end)


class AuditEvents(Sequence[dict[str, Any]]):
    """The events of a log at one moment, each parsed (again) when asked for: a slice after a
    mark reads and parses only its own lines."""

    def __init__(self, path: Path, starts: array.array[int], end: int) -> None:
        self._path, self._starts, self._end = path, starts, end

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return list(self._parse(range(len(self))[index]))
        line = range(len(self))[index]  # (IndexError beyond the end)
        (event,) = self._parse(range(line, line + 1))
        return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._parse(range(len(self)))

    def _parse(self, lines: range) -> Iterator[dict[str, Any]]:
        if not lines:
            return
        if lines.step != 1:
            yield from (self[i] for i in lines)
            return
        first, last = lines[0], lines[-1]
        stop = self._starts[last + 1] if last + 1 < len(self._starts) else self._end
        with self._path.open("rb") as log:
            log.seek(self._starts[first])
            data = log.read(stop - self._starts[first])
        for line in data.splitlines():
            if line.strip():
                yield json.loads(line)
