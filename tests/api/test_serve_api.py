"""``gridshare serve --api-token-file`` as a real subprocess: the API on its port, changes
refused without the token and applied with it (a simulated charger's offer drops), reads
open; and how tokens are read (file and environment)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import httpx
import pytest

from gridshare.api.auth import TOKEN_ENV, Auth, TokenFileError, load_tokens, read_token_file
from gridshare.sim import EV, SimCharger

SITE = """
site: serve-api
groups:
  - id: main
    max_current: 32
    chargers: [s-1]
chargers:
  - {id: s-1, max_current: 16, phases: 3}
"""

READY = re.compile(r"^gridshare ready: site serve-api, OCPP ws://127\.0\.0\.1:(\d+), "
                   r"1 chargers configured, status http://127\.0\.0\.1:(\d+)/status$")


async def test_serve_with_a_token_file(tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    tokens = tmp_path / "tokens"
    tokens.write_text("# operators\n\nfile-token-1\n  file-token-2  \n")
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    env[TOKEN_ENV] = "env-token"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridshare", "serve", str(site), "--host", "127.0.0.1",
        "--ocpp-port", "0", "--api-port", "0", "--db", "none", "--api-token-file",
        str(tokens), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode().rstrip("\n")
        match = READY.match(line)
        assert match, line
        ocpp_port, api_port = int(match[1]), int(match[2])
        charger = SimCharger("s-1", f"ws://127.0.0.1:{ocpp_port}", protocol="ocpp1.6",
                             max_current_a=16.0)
        await charger.start()
        try:
            assert await charger.wait_connected(10.0)
            charger.plug_nowait(1, EV(capacity_kwh=60.0, soc=0.3, max_current_a=16.0))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
                for _ in range(200):
                    if charger.offered_a(1) >= 15.9:
                        break
                    await asyncio.sleep(0.05)
                assert charger.offered_a(1) == pytest.approx(16.0)
                site_json = (await http.get("/api/v1/site")).json()
                assert site_json["site"] == "serve-api"
                url = "/api/v1/groups/main/limit"
                body = {"max_current": 8}
                assert (await http.put(url, json=body)).status_code == 401
                r = await http.put(url, json=body, headers={"Authorization": "Bearer nope"})
                assert r.status_code == 401
                assert charger.offered_a(1) == pytest.approx(16.0)
                for token in ("file-token-1", "file-token-2", "env-token"):
                    r = await http.put(url, json=body,
                                       headers={"Authorization": f"Bearer {token}"})
                    assert r.status_code == 200, r.text
                for _ in range(200):
                    if charger.offered_a(1) <= 8.0:
                        break
                    await asyncio.sleep(0.05)
                assert charger.offered_a(1) == pytest.approx(8.0)
                assert (await http.get("/openapi.json")).status_code == 200
        finally:
            await charger.stop()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            rest, errors = await proc.communicate()
        assert proc.returncode == 0, errors.decode()
        assert rest == b""
        assert b"operator: group main limit 8 A" in errors  # the log names the change
        assert b"file-token" not in errors and b"env-token" not in errors
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(("text", "message"), [
    ("", "no token in it"),
    ("# only a comment\n\n", "no token in it"),
    ("two words\n", ":1: a token cannot contain spaces"),
])
async def test_serve_refuses_a_bad_token_file(tmp_path: Path, text: str, message: str) -> None:
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    tokens = tmp_path / "tokens"
    tokens.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridshare", "serve", str(site), "--api-token-file", str(tokens),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert message in err.decode(), err.decode()


def test_token_sources(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("a\n#b\n\n  c \na\n")
    assert read_token_file(path) == ["a", "c", "a"]
    assert load_tokens(path, {}) == ("a", "c")
    assert load_tokens(path, {TOKEN_ENV: " e "}) == ("a", "c", "e")
    assert load_tokens(None, {TOKEN_ENV: "e"}) == ("e",)
    assert load_tokens(None, {TOKEN_ENV: "  "}) == ()
    with pytest.raises(TokenFileError, match="No such file"):
        read_token_file(tmp_path / "missing")
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(TokenFileError, match="not UTF-8"):
        read_token_file(tmp_path / "bin")


def test_tokens_are_checked_exactly() -> None:
    auth = Auth(["secret", "other"])
    assert auth.valid("secret") and auth.valid("other")
    for bad in ("", None, "secre", "secret ", "SECRET", "secretx", "othersecret"):
        assert not auth.valid(bad)
    assert not Auth([]).valid("secret")
