"""The metrics server's TLS certificate, as kubebuilder v4's scaffold gets it: from a directory
(`--metrics-cert-path`, with `--metrics-cert-name` and `--metrics-cert-key`: a mounted Secret,
e.g. cert-manager's), read again when the files change, as controller-runtime's certwatcher does;
or, without one, a self-signed certificate made at start (Prometheus then scrapes with
insecureSkipVerify, as kubebuilder's ServiceMonitor does by default).

A changed pair is checked whole before it is served: a certificate that does not load, or does
not match its key (a Secret half rotated), is logged and counted, and the previous pair goes on
being served. New connections get the newest pair; open ones keep theirs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio

log = logging.getLogger(__name__)
POLL_INTERVAL = 10.0  # certwatcher's default
SELF_SIGNED_DAYS = 365


class CertificateError(Exception):
    """The certificate or key could not be read, or they do not belong together."""


# TLS 1.2's ciphers: forward-secret AEAD only (Mozilla's "intermediate" list; OpenSSL's default
# adds CBC ones, which Go's servers, kube-apiserver's and controller-runtime's, do not offer
# either). TLS 1.3's are all AEAD and not set by this.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL"


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # Client-initiated renegotiation costs the server a handshake each: Go's servers refuse it.
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])  # no HTTP/2, as kubebuilder's --enable-http2=false
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise CertificateError(f"cannot load the certificate {cert} with the key {key}: "
                               f"{error}") from error
    return context


def _fingerprint(paths: tuple[Path, ...]) -> tuple[tuple[int, ...], ...] | None:
    """What changes when a file is replaced or rewritten (the kubelet swaps a Secret's files
    by moving a symlink); None while one is missing."""
    try:
        stats = [path.stat() for path in paths]
    except OSError:
        return None
    return tuple((s.st_dev, s.st_ino, s.st_mtime_ns, s.st_size) for s in stats)


class ServingCertificate:
    """The TLS context the metrics listener serves with. `files` is (certificate, key), or None
    for a self-signed pair. `loaded` and `failed` count reads of the files (controller-runtime's
    certwatcher_read_certificate_total and _errors_total)."""

    def __init__(self, files: tuple[Path, Path] | None, poll_interval: float = POLL_INTERVAL,
                 loaded: Callable[[], None] = lambda: None,
                 failed: Callable[[], None] = lambda: None) -> None:
        self.files = files
        self.poll_interval = poll_interval
        self._loaded, self._failed = loaded, failed
        self._seen = _fingerprint(files) if files is not None else None
        if files is None:
            with _self_signed_files() as (cert, key):
                self.current = _context(cert, key)
        else:
            self.current = self._read(*files)  # raises: without a certificate there is no start
        # The listener's context: each handshake switches to the newest pair (the callback runs
        # for every ClientHello, with or without a server name in it).
        self.listening = self.current
        self.listening.sni_callback = self._newest

    def _newest(self, connection: ssl.SSLObject, _name: str | None, _: ssl.SSLContext) -> None:
        if connection.context is not self.current:
            connection.context = self.current

    def _read(self, cert: Path, key: Path) -> ssl.SSLContext:
        try:
            context = _context(cert, key)
        except CertificateError:
            self._failed()
            raise
        self._loaded()
        return context

    def reload_if_changed(self) -> bool:
        """Serve the files' pair if they changed since last read and load together; True if
        it did."""
        if self.files is None:
            return False
        seen = _fingerprint(self.files)
        if seen is None or seen == self._seen:
            return False
        self._seen = seen
        try:
            context = self._read(*self.files)
        except CertificateError as error:
            log.error("keeping the metrics certificate served so far", extra={"error": str(error)})
            return False
        self.current = context
        log.info("serving the changed metrics certificate", extra={"path": str(self.files[0])})
        return True

    async def watch(self) -> None:
        """Look for changed files every `poll_interval` seconds, until cancelled."""
        if self.files is None:
            return
        while True:
            await anyio.sleep(self.poll_interval)
            self.reload_if_changed()


@contextlib.contextmanager
def _self_signed_files() -> Iterator[tuple[Path, Path]]:
    """A new self-signed certificate and its key as two files that exist only while the
    context lasts: in memory (memfd) where the kernel offers it, else in a private temporary
    directory (the pod's /tmp; the root filesystem is read-only)."""
    cert_pem, key_pem = self_signed_pem(socket.gethostname())
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create(name, 0) for name in ("tls.crt", "tls.key")]
        try:
            for fd, pem in zip(fds, (cert_pem, key_pem), strict=True):
                os.write(fd, pem)
            yield Path(f"/proc/self/fd/{fds[0]}"), Path(f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="nimbus-kubearmor-metrics-") as directory:
        cert, key = Path(directory) / "tls.crt", Path(directory) / "tls.key"
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        yield cert, key


def self_signed_pem(hostname: str, days: int = SELF_SIGNED_DAYS) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate for `hostname`, localhost and 127.0.0.1, and its
    key, as PEM. (cryptography is imported here only: a mounted certificate needs none of it.)"""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys((hostname, "localhost"))
                                     if n]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256()))
    return (certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
