"""A service-account volume laid out as the kubelet lays out a projected volume (its
AtomicWriter), for the reconciler to find at /var/run/secrets/kubernetes.io/serviceaccount:

    ..2026_01_02_03_04_05.123456/   token, ca.crt, namespace (the files themselves)
    ..data -> ..2026_01_02_03_04_05.123456
    token -> ..data/token           (and ca.crt, namespace alike)

A rotation writes a new timestamped directory, points a new symlink `..data_tmp` at it and renames
that over `..data`: one atomic step, so a reader sees the old files or the new, never a mix, and
the old directory is removed afterwards. A file opened before keeps the old contents."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from pathlib import Path

MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


class ServiceAccountVolume:
    def __init__(self, directory: Path, *, token: str, ca_pem: bytes, namespace: str,
                 run_as: tuple[int, int] | None = None) -> None:
        """`run_as` (uid, gid): the pod's runAsUser and runAsGroup. Then, as the kubelet does
        when every container runs as that user, the token is theirs, mode 0600; otherwise
        every file is 0644 (the projected volume's default mode)."""
        self.directory = directory
        self.run_as = run_as
        self._ca_pem = ca_pem
        self._namespace = namespace
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        self._write({"token": token.encode(), "ca.crt": ca_pem, "namespace": namespace.encode()})
        for name in ("token", "ca.crt", "namespace"):
            (directory / name).symlink_to(f"..data/{name}")

    @property
    def token_path(self) -> Path:
        return self.directory / "token"

    def rotate(self, token: str) -> None:
        """The kubelet's rotation: the same files, a new token, swapped in at once."""
        self._write({"token": token.encode(), "ca.crt": self._ca_pem,
                     "namespace": self._namespace.encode()})

    def _write(self, files: dict[str, bytes]) -> None:
        now = dt.datetime.now(dt.UTC)
        timestamped = Path(tempfile.mkdtemp(prefix=f"..{now:%Y_%m_%d_%H_%M_%S}.",
                                            dir=self.directory))
        timestamped.chmod(0o755)
        for name, content in files.items():
            path = timestamped / name
            path.write_bytes(content)
            path.chmod(0o644)
        if self.run_as is not None:
            os.chown(timestamped / "token", *self.run_as)
            (timestamped / "token").chmod(0o600)
        data = self.directory / "..data"
        previous = os.readlink(data) if data.is_symlink() else None
        swap = self.directory / "..data_tmp"
        swap.symlink_to(timestamped.name)
        swap.rename(data)
        if previous is not None:
            shutil.rmtree(self.directory / previous)
