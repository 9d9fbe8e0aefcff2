"""The service-account token file, read again as client-go reads it.

In a pod the kubelet mounts a bound token that expires (an hour by default) and writes a new one
into the same file when 80% of its life has passed. client-go's in-cluster configuration
(`transport.NewCachedFileTokenSource`) does not wait for a 401 to notice: a token read from the
file is good for a minute less a 10 s leeway, then read again. So a rotated token is in use within
a minute, long before the old one expires or is revoked, and no request is refused for it."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from .clock import Clock

log = logging.getLogger(__name__)

# client-go: fileTokenSource's period (1 min) less cachingTokenSource's leeway (10 s).
REREAD_AFTER = 50.0


class TokenFile:
    """The token in `path`, read again once the last read is `reread_after` seconds old (by
    `clock`), or at once by `read()` (after a 401). A read that fails (the file missing or empty)
    keeps the token read before, as client-go does, and is tried again at the next `token()`."""

    def __init__(self, path: Path, clock: Clock, reread_after: float = REREAD_AFTER) -> None:
        self.path = path
        self._clock = clock
        self._reread_after = reread_after
        # The token of the last read that succeeded and when it was (clock time); None and -inf
        # before the first. A failed read changes neither, so the next `token()` reads again.
        self._token: str | None = None
        self._read_at = -math.inf
        # Whether the last read failed: the failure is logged once, not at every request.
        self._failing = False

    def token(self) -> str | None:
        """The token, read again first if the last read is too old."""
        if self._clock.now() - self._read_at >= self._reread_after:
            return self.read()
        return self._token

    def read(self) -> str | None:
        """Read the file now; the token read before if that fails (None if there is none)."""
        try:
            token = self.path.read_text().strip()
            if not token:
                raise ValueError("the file is empty")
        except (OSError, UnicodeDecodeError, ValueError) as error:
            if not self._failing:
                log.warning("cannot read the service-account token again; going on with the one "
                            "read before", extra={"path": str(self.path), "error": str(error)})
            self._failing = True
            return self._token
        if self._failing:
            log.info("read the service-account token again", extra={"path": str(self.path)})
        self._failing = False
        self._token = token
        self._read_at = self._clock.now()
        return token
