"""The files kr8s writes a kubeconfig's inline credentials into, removed once they are read.

kr8s writes `client-key-data`, `client-certificate-data` and `certificate-authority-data` (an exec
plugin's clientKeyData too) each into a `NamedTemporaryFile(delete=False)` in the temporary
directory every time it reads the kubeconfig (when the Api is made, and at each reauthenticate)
and never removes them: a copy of the private key left in /tmp by every start, every `--once`
run, every try at connecting while the API server is down and every read again after a 401.
Only `ssl.SSLContext.load_cert_chain` and `load_verify_locations` read them, when kr8s makes its
HTTP client (which keeps the loaded context), so once that client exists they are removed. (kr8s
makes a new client only when it re-authenticates itself, which writes the files again first:
on 401/403 with raise_for_status, which this project never uses after connecting.)"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

# kr8s's attribute for each file, and the kubeconfig entry whose inline data it holds then.
_INLINE = (("client_key_file", "_user", "client-key-data", "client-key"),
           ("client_cert_file", "_user", "client-certificate-data", "client-certificate"),
           ("server_ca_file", "_cluster", "certificate-authority-data", "certificate-authority"))


def written_files(auth: Any) -> list[Path]:
    """The files kr8s's `auth` (a KubeAuth) wrote its kubeconfig's inline data into: only one
    in the temporary directory for an entry that has inline data, never a file the kubeconfig
    names (a user's own key file stays, whatever happened)."""
    temporary = Path(tempfile.gettempdir())
    found = []
    for attribute, section, inline, named in _INLINE:
        entries = getattr(auth, section, None) or {}
        value = getattr(auth, attribute, None)
        if inline not in entries or not value or str(value) == str(entries.get(named)):
            continue
        path = Path(str(value))
        if path.parent == temporary and path.name.startswith(tempfile.gettempprefix()):
            found.append(path)
    return found


def remove_written_files(auth: Any) -> None:
    for path in written_files(auth):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
