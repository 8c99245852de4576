"""Security profiles 0-3 with certificates generated at test time (certs.make_ca/make_cert)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
from csms_helpers import CsmsFactory, Msgs, charger
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.headers import build_authorization_basic

from gridshare.adapters.ocpp import ChargerCredentials, TlsConfig, hash_password, verify_password
from gridshare.adapters.ocpp.auth import charger_id_from_path, server_ssl_context
from gridshare.adapters.ocpp.certs import CertificateAuthority, make_ca, make_cert
from gridshare.events import ChargerOnline

PASSWORD = "correct-horse-battery-staple"  # 16-40 characters, as OCPP 2.0.1 wants
VERSION = "ocpp1.6"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": build_authorization_basic(user, password)}


async def refused_status(url: str, **kw: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, subprotocols=[VERSION], open_timeout=5, **kw):
            pass
    return info.value.response.status_code


async def fails_to_open(url: str, **kw: Any) -> bool:
    """True when the connection cannot be opened at all (TLS refused before HTTP)."""
    try:
        async with connect(url, subprotocols=[VERSION], open_timeout=5, **kw) as ws:
            await ws.send('[2,"x","Heartbeat",{}]')
            await ws.recv()
    except (OSError, InvalidHandshake):  # TLS 1.3 reports a refused client cert late
        return True
    return False


# --- passwords and paths --------------------------------------------------------------------

def test_password_hash_roundtrip_and_format() -> None:
    hashed = hash_password(PASSWORD)
    scheme, n, r, p, salt, digest = hashed.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(salt) == 24 and len(digest) == 44  # base64 of 16 and 32 bytes
    assert hashed != hash_password(PASSWORD)  # salted
    assert verify_password(PASSWORD, hashed)
    assert not verify_password(PASSWORD + "x", hashed)
    assert not verify_password(PASSWORD, "garbage")
    assert not verify_password(PASSWORD, "scrypt$99999999999$8$1$AAAA$AAAA")


@pytest.mark.parametrize(("path", "expected"), [
    ("/CP-1", "CP-1"), ("/ocpp/site/CP-1", "CP-1"), ("/ocpp/CP-1/", "CP-1"),
    ("/ocpp/CP%2D1?x=1", "CP-1"), ("/", None), ("/bad%20id", None), ("/%ff", None),
    ("/" + "x" * 49, None),
])
def test_charger_id_from_path(path: str, expected: str | None) -> None:
    assert charger_id_from_path(path) == expected


# --- profile 0 and 1 --------------------------------------------------------------------------

async def test_profile0_unknown_refused_unless_auto_register(make_csms: CsmsFactory) -> None:
    csms, events = await make_csms(chargers={"KNOWN": ChargerCredentials()},
                                   allow_auto_register=False)
    assert await refused_status(f"ws://127.0.0.1:{csms.port}/STRANGER") == 404
    assert await refused_status(f"ws://127.0.0.1:{csms.port}/") == 404
    async with charger(csms, "KNOWN", VERSION) as cp:
        await cp.call(Msgs(VERSION).heartbeat())
    auto, _ = await make_csms(allow_auto_register=True)
    async with charger(auto, "STRANGER", VERSION) as cp:
        await cp.call(Msgs(VERSION).heartbeat())
    assert csms.counters.rejected["auth_unknown_charger"] == 1
    assert [e.charger for e in events.of(ChargerOnline)] == ["KNOWN"]


async def test_profile1_basic_auth(make_csms: CsmsFactory) -> None:
    csms, events = await make_csms(security_profile=1, allow_auto_register=False,
                                   chargers={"CP-1": ChargerCredentials(hash_password(PASSWORD)),
                                             "CP-NOHASH": ChargerCredentials()})
    url = f"ws://127.0.0.1:{csms.port}/CP-1"
    async with charger(csms, "CP-1", VERSION, additional_headers=basic("CP-1", PASSWORD)) as cp:
        await cp.call(Msgs(VERSION).heartbeat())
    async with charger(csms, "CP-1", VERSION, additional_headers=basic("CP-1", PASSWORD)):
        pass  # reconnect: served from the verified-password cache
    assert await refused_status(url, additional_headers=basic("CP-1", "wrong-password-123")) == 401
    assert await refused_status(url) == 401
    assert await refused_status(url, additional_headers={"Authorization": "Bearer x"}) == 401
    assert await refused_status(url, additional_headers=basic("CP-2", PASSWORD)) == 401
    assert await refused_status(f"ws://127.0.0.1:{csms.port}/CP-2",
                                additional_headers=basic("CP-2", PASSWORD)) == 401
    assert await refused_status(f"ws://127.0.0.1:{csms.port}/CP-NOHASH",
                                additional_headers=basic("CP-NOHASH", PASSWORD)) == 401
    rejected = csms.counters.rejected
    assert rejected["auth_bad_password"] == 2 and rejected["auth_missing"] == 1
    assert rejected["auth_malformed"] == 1 and rejected["auth_username_mismatch"] == 1
    assert rejected["auth_unknown_charger"] == 1
    assert len(events.of(ChargerOnline)) == 2


async def test_profile1_auto_register_pins_first_password(make_csms: CsmsFactory) -> None:
    csms, _ = await make_csms(security_profile=1, allow_auto_register=True)
    async with charger(csms, "NEW-1", VERSION, additional_headers=basic("NEW-1", PASSWORD)) as cp:
        await cp.call(Msgs(VERSION).heartbeat())
    async with charger(csms, "NEW-1", VERSION, additional_headers=basic("NEW-1", PASSWORD)):
        pass
    assert await refused_status(f"ws://127.0.0.1:{csms.port}/NEW-1",
                                additional_headers=basic("NEW-1", "another-password-42")) == 401


# --- TLS: profiles 2 and 3 --------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pki")
    ca = make_ca(root / "ca", "gridshare test CA")
    other = make_ca(root / "other", "someone else's CA")
    server = make_cert(ca, "localhost", root / "server", server=True)
    return {
        "ca": ca, "server": server,
        "good": make_cert(ca, "CP-3", root / "clients", organization="gridshare"),
        "wrong_cn": make_cert(ca, "CP-OTHER", root / "clients"),
        "foreign": make_cert(other, "CP-3", root / "foreign"),
    }


def client_context(ca: CertificateAuthority, cert: Any = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    return ctx


def test_certs_written_as_pem(pki: dict[str, Any]) -> None:
    ca: CertificateAuthority = pki["ca"]
    assert ca.cert_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert Path(pki["good"].key_path).stat().st_mode & 0o777 == 0o600
    tls = TlsConfig(pki["server"].cert_path, pki["server"].key_path, ca.cert_path)
    assert server_ssl_context(tls, require_client_cert=True).minimum_version is (
        ssl.TLSVersion.TLSv1_2)


async def test_profile2_tls_and_basic_auth(make_csms: CsmsFactory, pki: dict[str, Any]) -> None:
    server = pki["server"]
    csms, events = await make_csms(
        security_profile=2, allow_auto_register=False,
        tls=TlsConfig(server.cert_path, server.key_path),
        chargers={"CP-2": ChargerCredentials(hash_password(PASSWORD))})
    ctx = client_context(pki["ca"])
    async with charger(csms, "CP-2", VERSION, ssl=ctx,
                       additional_headers=basic("CP-2", PASSWORD)) as cp:
        assert cp.ws.transport.get_extra_info("ssl_object").version() in (
            "TLSv1.2", "TLSv1.3")
        await cp.call(Msgs(VERSION).boot())
    url = f"wss://127.0.0.1:{csms.port}/CP-2"
    assert await refused_status(url, ssl=ctx, additional_headers=basic("CP-2", "bad-pw-1234567")) \
        == 401
    assert await fails_to_open(f"ws://127.0.0.1:{csms.port}/CP-2",
                               additional_headers=basic("CP-2", PASSWORD))
    assert len(events.of(ChargerOnline)) == 1


async def test_profile3_mutual_tls(make_csms: CsmsFactory, pki: dict[str, Any]) -> None:
    server, ca = pki["server"], pki["ca"]
    csms, events = await make_csms(
        security_profile=3, allow_auto_register=False,
        tls=TlsConfig(server.cert_path, server.key_path, ca.cert_path),
        chargers={"CP-3": ChargerCredentials(), "CP-OTHER": ChargerCredentials()})
    async with charger(csms, "CP-3", VERSION, ssl=client_context(ca, pki["good"])) as cp:
        await cp.call(Msgs(VERSION).boot())
    url = f"wss://127.0.0.1:{csms.port}/CP-3"
    assert await fails_to_open(url, ssl=client_context(ca))  # no client certificate
    assert await fails_to_open(url, ssl=client_context(ca, pki["foreign"]))  # other CA
    # A valid certificate for another charger cannot claim this id.
    assert await refused_status(url, ssl=client_context(ca, pki["wrong_cn"])) == 403
    assert csms.counters.rejected["auth_cn_mismatch"] == 1
    assert [e.charger for e in events.of(ChargerOnline)] == ["CP-3"]


def test_config_refuses_tls_profiles_without_certificates(pki: dict[str, Any]) -> None:
    from gridshare.adapters.ocpp import CsmsConfig
    with pytest.raises(ValueError, match="tls"):
        CsmsConfig(security_profile=2)
    server = pki["server"]
    with pytest.raises(ValueError, match="cafile"):
        CsmsConfig(security_profile=3, tls=TlsConfig(server.cert_path, server.key_path))
    with pytest.raises(ValueError, match="security_profile"):
        CsmsConfig(security_profile=4)
