"""Issue 16 item 9: the emulator serves https when given a certificate, and the official
SDK behaves there as it does against RunPod.

runpod-python 1.12 mounts its 408/429 retry adapter for ``http://`` URLs only
(``runpod/endpoint/runner.py`` 47-48): against RunPod (https) the first 429 raises; against
a plain-http emulator it is retried silently. Serving https shows the real behaviour.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.emulator.testing import EmulatorHandle, running_emulator

try:
    import requests
    import runpod
except ImportError:
    if os.environ.get("CI"):
        raise  # the SDK is in the test extra: missing it in CI is a failure
    pytest.skip("the runpod SDK is not installed", allow_module_level=True)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made for this module."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bridge emulator test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    where = tmp_path_factory.mktemp("tls")
    cert_file, key_file = where / "cert.pem", where / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@pytest.fixture(scope="module")
def tls_emu(certificate: tuple[Path, Path]) -> Iterator[EmulatorHandle]:
    cert_file, key_file = certificate
    with running_emulator(tls_cert_file=cert_file, tls_key_file=key_file) as handle:
        yield handle


def test_it_serves_https_with_the_certificate(tls_emu: EmulatorHandle) -> None:
    assert tls_emu.url.startswith("https://127.0.0.1:")
    with tls_emu.client() as api:
        assert api.post("/echo/runsync", json={"input": {"s": 1}}).json()["output"] == {"s": 1}
    headers = {"Authorization": f"Bearer {tls_emu.api_key}"}
    with httpx.Client(base_url=tls_emu.url, headers=headers, verify=tls_emu.verify) as admin:
        urls = admin.get("/v2/serverless/echo").json()["requestUrls"]
    assert urls["run"] == f"{tls_emu.url}/v2/echo/run"


def one_429_then_ok() -> int:
    """A fault seed whose first /health draw is a 429 and whose second is not (at 50 %)."""
    for seed in range(1000):
        draws = random.Random(seed)
        if draws.random() < 0.5 <= draws.random():
            return seed
    raise AssertionError("no such seed")


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path]) -> None:
    """The SDK's globals for these tests, restored afterwards; requests trusts our cert."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    monkeypatch.setattr(runpod, "api_key", runpod.api_key)
    monkeypatch.setattr(runpod, "endpoint_url_base", runpod.endpoint_url_base)


def health_through_the_sdk(emu: EmulatorHandle) -> dict[str, object] | Exception:
    runpod.api_key = emu.api_key
    runpod.endpoint_url_base = emu.base_url
    endpoint = runpod.Endpoint("echo")
    emu.set_faults("echo", rate_limit_rate=0.5, seed=one_429_then_ok())
    try:
        health: dict[str, object] = endpoint.health()
        return health
    except requests.HTTPError as exc:
        return exc
    finally:
        endpoint.rp_client.rp_session.close()
        emu.set_faults("echo")


@pytest.mark.usefixtures("sdk")
def test_over_http_the_sdk_retries_a_429_silently() -> None:
    with running_emulator() as plain:
        over_http = health_through_the_sdk(plain)
        assert plain.stats("echo")["requests"]["health"] == 2
    assert isinstance(over_http, dict), over_http  # retried after Retry-After: 1


@pytest.mark.usefixtures("sdk")
def test_over_https_the_sdk_raises_at_the_first_429_as_against_runpod(
    tls_emu: EmulatorHandle,
) -> None:
    over_https = health_through_the_sdk(tls_emu)
    assert isinstance(over_https, requests.HTTPError), over_https
    assert over_https.response is not None
    assert over_https.response.status_code == 429
    assert tls_emu.stats("echo")["requests"]["health"] == 1
