"""/metrics over HTTPS (reconciler/server.py, reconciler/servingcerts.py), served in-process on
127.0.0.1 with real TLS handshakes: the self-signed certificate, a mounted one swapped the way
the kubelet updates a Secret volume (read again; a half-rotated pair is not served), the
answers of the check in front of /metrics, and the probes staying plain HTTP. The decisions
come from a table here (tests/unit/test_delegatedauth.py); the API server's, end to end, in
tests/e2e/test_metrics_auth.py."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import attrs
import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Counter

from reconciler.app import RunOptions, metrics_certificate
from reconciler.clock import FakeClock
from reconciler.controller import ControllerConfig
from reconciler.delegatedauth import DelegatedAuth
from reconciler.metrics import Metrics
from reconciler.server import Servers
from reconciler.servingcerts import CertificateError, ServingCertificate, self_signed_pem
from tests.unit.test_delegatedauth import TableReviewer
from tests.waiting import eventually


async def served_certificate(port: int) -> x509.Certificate:
    """The certificate a new TLS connection to 127.0.0.1:`port` is shown."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


def common_name(certificate: x509.Certificate) -> str:
    return str(certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("scraped_total", "something to scrape", registry=registry).inc()
    return registry


@pytest.fixture
async def secure(registry: CollectorRegistry) -> AsyncIterator[tuple[Servers, TableReviewer]]:
    reviewer = TableReviewer()
    servers = Servers(registry, lambda: [], "127.0.0.1:0", "127.0.0.1:0",
                      tls=ServingCertificate(None).listening,
                      auth=DelegatedAuth(lambda: reviewer, FakeClock()))
    await servers.start()
    try:
        yield servers, reviewer
    finally:
        await servers.stop()


async def test_secure_metrics_and_plain_probes(secure: tuple[Servers, TableReviewer]) -> None:
    servers, _ = secure
    (_, metrics_port), (_, probe_port) = servers.bound
    metrics = f"https://127.0.0.1:{metrics_port}/metrics"
    async with httpx.AsyncClient(verify=False, timeout=10) as client:
        answer = await client.get(metrics)
        assert (answer.status_code, answer.text) == (401, "Unauthorized\n")
        answer = await client.get(metrics, headers={"Authorization": "Bearer intruder-token"})
        assert answer.status_code == 403
        assert answer.text == "Authorization denied for user system:serviceaccount:default:intruder\n"
        answer = await client.get(metrics, headers={"Authorization": "Bearer prometheus-token"})
        assert answer.status_code == 200 and "scraped_total 1.0" in answer.text
        assert (await client.get(f"http://127.0.0.1:{probe_port}/readyz")).status_code == 200
        assert (await client.get(f"http://127.0.0.1:{probe_port}/metrics")).status_code == 404
        with pytest.raises(httpx.TransportError):  # no plain HTTP on the metrics port
            await client.get(f"http://127.0.0.1:{metrics_port}/metrics")


async def test_the_self_signed_certificate(secure: tuple[Servers, TableReviewer]) -> None:
    servers, _ = secure
    certificate = await served_certificate(servers.bound[0][1])
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert certificate.issuer == certificate.subject
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 364 <= lifetime.days <= 366


def test_secure_metrics_and_probes_cannot_share_a_listener(registry: CollectorRegistry) -> None:
    with pytest.raises(ValueError, match="own address"):
        Servers(registry, lambda: [], "127.0.0.1:9443", "127.0.0.1:9443",
                tls=ServingCertificate(None).listening)


class SecretVolume:
    """A Secret's files as the kubelet lays them out: `tls.crt` -> `..data/tls.crt`, `..data`
    a symlink to a timestamped directory, swapped in one rename on each update."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        for name in ("tls.crt", "tls.key"):
            (directory / name).symlink_to(Path("..data") / name)

    def write(self, cert_pem: bytes, key_pem: bytes) -> None:
        version = self.directory / f"..{time.time_ns()}"
        version.mkdir()
        (version / "tls.crt").write_bytes(cert_pem)
        (version / "tls.key").write_bytes(key_pem)
        staged = self.directory / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.directory / "..data")


async def test_a_mounted_certificate_is_served_and_read_again_when_it_changes(
        tmp_path: Path, registry: CollectorRegistry) -> None:
    volume = SecretVolume(tmp_path)
    first, second, third = (self_signed_pem(name) for name in ("first", "second", "third"))
    volume.write(*first)
    reads, errors = [], []
    certificate = ServingCertificate((tmp_path / "tls.crt", tmp_path / "tls.key"),
                                     poll_interval=0.02, loaded=lambda: reads.append(1),
                                     failed=lambda: errors.append(1))
    servers = Servers(registry, lambda: [], "127.0.0.1:0", "0", tls=certificate.listening,
                      auth=DelegatedAuth(lambda: TableReviewer(), FakeClock()))
    await servers.start()  # as the Manager serves it
    port = servers.bound[0][1]
    watching = asyncio.create_task(certificate.watch())
    try:
        assert common_name(await served_certificate(port)) == "first"
        volume.write(*second)

        async def serving(name: str) -> bool:
            return common_name(await served_certificate(port)) == name
        await eventually(lambda: serving("second"), 5, "the new certificate to be served")
        assert (len(reads), len(errors)) == (2, 0)

        volume.write(third[0], second[1])  # half rotated: the new certificate, the old key
        await eventually(lambda: errors, 5, "the mismatched pair to be read")
        assert common_name(await served_certificate(port)) == "second"
        volume.write(*third)
        await eventually(lambda: serving("third"), 5, "the whole new pair to be served")
        assert (len(reads), len(errors)) == (3, 1)
    finally:
        watching.cancel()
        await servers.stop()


def test_a_missing_or_broken_certificate_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"tls\.crt.*No such file"):
        ServingCertificate((tmp_path / "tls.crt", tmp_path / "tls.key"))
    cert, _ = self_signed_pem("one")
    _, other_key = self_signed_pem("two")
    (tmp_path / "tls.crt").write_bytes(cert)
    (tmp_path / "tls.key").write_bytes(other_key)
    with pytest.raises(CertificateError, match=r"(?i)key values mismatch"):
        ServingCertificate((tmp_path / "tls.crt", tmp_path / "tls.key"))


def test_which_certificate_the_options_give(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    base = RunOptions(ControllerConfig())
    assert metrics_certificate(attrs.evolve(base, metrics_bind_address="0"), metrics) is None
    assert metrics_certificate(attrs.evolve(base, metrics_secure=False), metrics) is None
    self_signed = metrics_certificate(base, metrics)
    assert self_signed is not None and self_signed.files is None
    for name, pem in zip(("cert.pem", "key.pem"), self_signed_pem("mounted"), strict=True):
        (tmp_path / name).write_bytes(pem)
    mounted = metrics_certificate(attrs.evolve(
        base, metrics_cert_path=str(tmp_path), metrics_cert_name="cert.pem",
        metrics_cert_key="key.pem"), metrics)
    assert mounted is not None and mounted.files == (tmp_path / "cert.pem", tmp_path / "key.pem")
    assert metrics.registry.get_sample_value("certwatcher_read_certificate_total") == 1
    assert metrics.registry.get_sample_value("certwatcher_read_certificate_errors_total") == 0


async def handshake(port: int, *, ciphers: str | None = None,
                    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
                    maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> str:
    """The TLS version and cipher a new connection to 127.0.0.1:`port` agrees on, as a client
    offering only `ciphers` (TLS 1.2's) up to `maximum`; raises ssl.SSLError (or a reset) if
    there is none."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.minimum_version, context.maximum_version = minimum, maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        return f"{ssl_object.version()} {ssl_object.cipher()[0]}"
    finally:
        writer.close()


async def test_tls_1_2_with_aead_ciphers_only_no_renegotiation(
        secure: tuple[Servers, TableReviewer]) -> None:
    """What a Go server (kube-apiserver, controller-runtime's metrics server) accepts, or less:
    TLS 1.2 and 1.3; under 1.2 only forward-secret AEAD ciphers (Mozilla's intermediate list:
    no CBC); no renegotiation (Go's server has none)."""
    port = secure[0].bound[0][1]
    assert (await handshake(port)).startswith("TLSv1.3 ")
    tls12 = ssl.TLSVersion.TLSv1_2
    assert await handshake(port, maximum=tls12) == "TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384"
    assert await handshake(port, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305", maximum=tls12) == \
        "TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305"
    for cbc in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # refused in the handshake
            await handshake(port, ciphers=f"{cbc}:@SECLEVEL=0", maximum=tls12)
    with pytest.raises((ssl.SSLError, ConnectionResetError)), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1's name
        await handshake(port, ciphers="DEFAULT:@SECLEVEL=0", minimum=ssl.TLSVersion.TLSv1_1,
                        maximum=ssl.TLSVersion.TLSv1_1)
    assert ServingCertificate(None).listening.options & ssl.OP_NO_RENEGOTIATION


async def closed_by_the_server(reader: asyncio.StreamReader, within: float = 5) -> bool:
    """Whether the server closes the connection (EOF or a reset) within `within` seconds,
    the client having sent nothing."""
    try:
        async with asyncio.timeout(within):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def test_tls_connections_beyond_the_cap_are_closed_before_any_tls_state(
        registry: CollectorRegistry) -> None:
    """Each TLS connection costs the server about 300 KB before its handshake (asyncio's TLS
    protocol keeps a 256 KB buffer per connection): 600 idle TCP connections, from anyone who
    reaches the port, were 180 MB, an OOM kill under the Deployment's 192 Mi limit. So at most
    `max_tls_connections` are open at once; one more is closed as soon as it is accepted, and
    a place is free again once one closes."""
    reviewer = TableReviewer()
    servers = Servers(registry, lambda: [], "127.0.0.1:0", "127.0.0.1:0",
                      tls=ServingCertificate(None).listening,
                      auth=DelegatedAuth(lambda: reviewer, FakeClock()), max_tls_connections=3)
    await servers.start()
    port = servers.bound[0][1]
    url = f"https://127.0.0.1:{port}/metrics"
    headers = {"Authorization": "Bearer prometheus-token"}
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]  # no TLS
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_the_server(reader)
        writer.close()
        assert not any([await closed_by_the_server(r, within=0.2) for r, _ in held])
        async with httpx.AsyncClient(verify=False, timeout=5) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(url, headers=headers)
            for _, holder in held:
                holder.close()

            async def scraped() -> bool:
                try:
                    return (await client.get(url, headers=headers)).status_code == 200
                except httpx.TransportError:
                    return False
            await eventually(scraped, 5, "a scrape once the held connections are gone")
        # the plain HTTP listener (the kubelet's probes) has no such cap
        probes = [await asyncio.open_connection("127.0.0.1", servers.bound[1][1])
                  for _ in range(5)]
        assert not any([await closed_by_the_server(r, within=0.2) for r, _ in probes])
        for _, holder in probes:
            holder.close()
    finally:
        await servers.stop()


async def test_idle_connections_are_closed(registry: CollectorRegistry) -> None:
    """An idle connection (no request yet, or none since the last answer) is closed after
    `idle_timeout` (90 s, controller-runtime's metrics server's IdleTimeout; aiohttp's own
    default was an hour), on both listeners."""
    servers = Servers(registry, lambda: [], "127.0.0.1:0", "127.0.0.1:0",
                      tls=ServingCertificate(None).listening,
                      auth=DelegatedAuth(lambda: TableReviewer(), FakeClock()), idle_timeout=0.5)
    await servers.start()
    try:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        tls_reader, _ = await asyncio.open_connection("127.0.0.1", servers.bound[0][1],
                                                      ssl=context)
        plain_reader, _ = await asyncio.open_connection("127.0.0.1", servers.bound[1][1])
        assert await closed_by_the_server(tls_reader)
        assert await closed_by_the_server(plain_reader)
    finally:
        await servers.stop()


async def test_stopping_does_not_wait_long_for_a_scrape_under_way(
        registry: CollectorRegistry) -> None:
    """A scrape waiting for its review (up to 10 s) when SIGTERM comes is given a moment, then
    cut: the pod's grace period is 10 s for everything (aiohttp's own default waits a minute)."""
    reviewer = TableReviewer()
    reviewer.gate = anyio.Event()  # the API server does not answer the review
    servers = Servers(registry, lambda: [], "127.0.0.1:0", "127.0.0.1:0",
                      tls=ServingCertificate(None).listening,
                      auth=DelegatedAuth(lambda: reviewer, FakeClock()))
    await servers.start()
    url = f"https://127.0.0.1:{servers.bound[0][1]}/metrics"
    async with httpx.AsyncClient(verify=False, timeout=30) as client:
        scrape = asyncio.create_task(
            client.get(url, headers={"Authorization": "Bearer prometheus-token"}))
        await eventually(lambda: reviewer.token_reviews, 5, "the scrape to wait for its review")
        started = time.monotonic()
        await servers.stop()
        took = time.monotonic() - started
        with pytest.raises(httpx.TransportError):
            await scrape
    assert took < 5, took  # half the grace period (it took a minute)
