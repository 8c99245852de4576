"""The user guide (docs/guide), the systemd unit and the Containerfile say what the code does.

Each test fails when the guide drifts from the code: a site file in it that no longer
loads, a unit or image that runs an option ``gridshare serve`` does not have, a link to a
file or heading that is gone, an alarm quoted in words the code no longer uses, or
certificate commands that do not give a working TLS handshake.
"""

from __future__ import annotations

import ast
import configparser
import json
import re
import shlex
import shutil
import ssl
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from gridshare.adapters.ocpp.auth import common_name, server_ssl_context
from gridshare.adapters.ocpp.config import TlsConfig
from gridshare.config import load_site_config, parse_site_config

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guide"
UNIT = ROOT / "packaging" / "gridshare.service"
CONTAINERFILE = ROOT / "Containerfile"
PAGES = sorted(GUIDE.glob("*.md"))

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
_PLACEHOLDER = re.compile(r"<[^<>]*>")


def _blocks(lang: str) -> list[tuple[Path, str]]:
    return [(page, m.group(2)) for page in PAGES
            for m in _FENCE.finditer(page.read_text(encoding="utf-8")) if m.group(1) == lang]


def _site_blocks() -> list[tuple[Path, str]]:
    """Every yaml block that is a whole site file (it has a top-level ``site:``)."""
    return [(p, text) for p, text in _blocks("yaml") if re.search(r"^site:", text, re.M)]


@cache
def _options(command: str) -> frozenset[str]:
    """The long options ``gridshare <command> --help`` lists."""
    out = subprocess.run([sys.executable, "-m", "gridshare", command, "--help"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return frozenset(re.findall(r"(?<![\w-])--[a-z][a-z-]*", out))


def _check_gridshare_argv(argv: list[str], where: str) -> None:
    """``argv`` (after the program) is ``serve SITE`` with options ``serve --help`` has."""
    assert argv[0] == "serve", f"{where}: runs {argv[0]!r}, not serve"
    assert argv[1] == "/etc/gridshare/site.yaml", where
    unknown = [a for a in argv if a.startswith("--") and a.split("=")[0] not in
               _options("serve")]
    assert not unknown, f"{where}: gridshare serve has no {unknown}"
    assert "--data-dir" in argv and argv[argv.index("--data-dir") + 1] == "/var/lib/gridshare"


# --- site files -------------------------------------------------------------------------


def test_the_guide_has_site_files() -> None:
    pages = {p.name for p, _ in _site_blocks()}
    assert {"concepts.md", "chargers.md", "meters.md"} <= pages


@pytest.mark.parametrize("page,text", _site_blocks(),
                         ids=lambda v: v.name if isinstance(v, Path) else "")
def test_every_site_file_in_the_guide_loads(page: Path, text: str) -> None:
    config = parse_site_config(text, page.name)
    for gid, group in config.topology.groups.items():
        if group.meter is not None:
            assert group.meter in {m.id for m in config.meters}, gid


def test_every_gridshare_command_line_in_the_guide_has_real_options() -> None:
    seen = 0
    for page in PAGES:
        text = re.sub(r"\\\n\s*", " ", page.read_text(encoding="utf-8"))
        for command, rest in re.findall(
                r"gridshare (check|allocate|serve|demo|hash-password)\b([^`\n|#]*)", text):
            for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", rest):
                assert option in _options(command), f"{page.name}: gridshare {command} {option}"
                seen += 1
    assert seen >= 10


# --- meter recipes ----------------------------------------------------------------------

_PAYLOADS: list[tuple[str, object, tuple[float, float, float]]] = [
    ("Shelly Pro 3EM EM.GetStatus", {
        "id": 0, "a_current": 10.2, "a_voltage": 231.1, "a_act_power": 2100.0,
        "b_current": 3.1, "b_voltage": 230.2, "b_act_power": 650.0, "c_current": 0.8,
        "c_voltage": 229.9, "c_act_power": 150.0, "total_current": 14.1,
        "total_act_power": 2900.0}, (10.2, 3.1, 0.8)),
    ("IoTaWatt query, group=all", [[12.5, 4.25, 6.0]], (12.5, 4.25, 6.0)),
    ("Tasmota tele/.../SENSOR", {
        "Time": "2026-11-30T08:00:00", "ENERGY": {
            "TotalStartTime": "2025-01-01T00:00:00", "Total": 123.4, "Today": 2.0,
            "Power": 2070, "ApparentPower": 2100, "Factor": 0.98, "Voltage": 230,
            "Current": 9.0}}, (3.0, 3.0, 3.0)),
    ("evcc-style", {"power": 690.0}, (1.0, 1.0, 1.0)),
    ("plain number", 690.0, (1.0, 1.0, 1.0)),
]
"""A realistic payload of each kind of device meters.md has a recipe for, and what a
3-phase group at 230 V should get from it (A per phase)."""


def _decodes(spec: dict[str, Any], payload: object) -> tuple[float, float, float] | None:
    from gridshare.adapters.meters.parse import Decoder, Rejected
    from gridshare.config import MeterSpec

    meter = MeterSpec.model_validate(spec)
    decoder = Decoder.build(meter.fields, meter.field, meter.unit, phases=3, voltage=230.0)
    got = decoder.decode(json.dumps(payload).encode())
    return None if isinstance(got, Rejected) else got


def test_every_meter_recipe_reads_its_device() -> None:
    import yaml

    specs = [m for _, text in _blocks("yaml") if "meters:" in text
             for m in (yaml.safe_load(text).get("meters") or []) if m["source"] != "ocpp"]
    text = (GUIDE / "meters.md").read_text(encoding="utf-8")
    inline = re.search(r"`fields: \{(L1: ENERGY[^}]*)\}, unit: A`", text)
    assert inline, "the three-phase Tasmota recipe is gone"
    three = {"id": "tasmota-3", "source": "mqtt", "topic": "t", "unit": "A",
             "fields": dict(part.split(": ") for part in inline.group(1).split(", "))}
    assert _decodes(three, {"ENERGY": {"Current": [12.1, 3.4, 5.0]}}) == (12.1, 3.4, 5.0)
    plain = {"id": "plain", "source": "mqtt", "topic": "t", "unit": "W"}
    assert "no `field:`, just `unit: W`" in text
    specs.append(plain)
    used = set()
    for spec in specs:
        matched = [name for name, payload, want in _PAYLOADS
                   if (got := _decodes(spec, payload)) is not None
                   and all(abs(a - b) < 1e-9 for a, b in zip(got, want, strict=True))]
        assert matched, f"meter {spec['id']} reads none of the sample payloads right"
        used.update(matched)
    assert used == {name for name, _, _ in _PAYLOADS}


# --- links ------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_every_relative_link_resolves() -> None:
    checked = 0
    for page in PAGES:
        text = _FENCE.sub("", page.read_text(encoding="utf-8"))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.name}: link to {target} (no such file)"
            if anchor:
                assert anchor in _anchors(resolved), f"{page.name}: no heading #{anchor}"
            checked += 1
    assert checked >= 10


# --- alarm texts ------------------------------------------------------------------------

_PRINTF = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdifr]")
_EDGES = " \t:;,.()[]'\"—-"


@cache
def _source_strings() -> tuple[frozenset[str], str]:
    """Every string the code can put in a message, cut at its placeholders (f-string
    values, %-formats): the pieces as a set, and joined by a separator for substring tests.
    Docstrings are left out: no message is made from them."""
    pieces: set[str] = set()
    for path in (ROOT / "src" / "gridshare").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                                    | ast.AsyncFunctionDef) and node.body
                      and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(str(v.value) if isinstance(v, ast.Constant) else "\0"
                               for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in docstrings:
                text = _PRINTF.sub("\0", node.value)
            else:
                continue
            pieces.update(text.split("\0"))
    return frozenset(pieces), "\x01" + "\x01".join(pieces) + "\x01"


def _producible(fragment: str) -> bool:
    """Whether the code can write ``fragment`` (a stretch of a message between two of the
    guide's placeholders): inside one piece, or as the end of one piece, whole pieces that
    were put in placeholders, and the start of another (messages nest: a guard message
    goes inside 'step not sent: ...')."""
    pieces, joined = _source_strings()
    if fragment in joined:
        return True
    n = len(fragment)
    reached = {i for i in range(1, n) if fragment[:i] + "\x01" in joined}
    seen: set[int] = set()
    while reached:
        i = reached.pop()
        seen.add(i)
        if "\x01" + fragment[i:] in joined:
            return True
        reached |= {j for j in range(i + 1, n) if fragment[i:j] in pieces} - seen
    return False


def _quoted_messages() -> list[str]:
    text = (GUIDE / "troubleshooting.md").read_text(encoding="utf-8")
    return re.findall(r"^### `([^`]+)`\s*$", text, re.M)


def test_troubleshooting_quotes_many_messages() -> None:
    kinds = (GUIDE / "troubleshooting.md").read_text(encoding="utf-8")
    for kind in ("limit", "meter", "guard", "plan", "rejected", "command", "violation",
                 "internal"):
        assert f"\n## {kind}" in kinds, kind
    assert len(_quoted_messages()) >= 20


@pytest.mark.parametrize("message", _quoted_messages())
def test_every_message_in_troubleshooting_is_in_the_code(message: str) -> None:
    fragments = [f.strip(_EDGES) for f in _PLACEHOLDER.split(message)]
    fragments = [f for f in fragments if f]
    assert sum(map(len, fragments)) >= 10, "too little text to recognise the message"
    missing = [f for f in fragments if not _producible(f)]
    assert not missing, f"the code never writes {missing}"


def test_the_message_check_notices_a_wrong_word() -> None:
    assert _producible("offline chargers alone draw")
    assert _producible("step not sent: group")  # nested messages
    assert not _producible("offline chargers together draw")
    assert not _producible("step was not sent: group")


# --- systemd ----------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def test_the_unit_runs_gridshare_serve_as_its_own_user() -> None:
    service = _unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/gridshare/bin/gridshare"
    _check_gridshare_argv(argv[1:], "ExecStart")
    assert service["User"] == "gridshare"
    assert service["StateDirectory"] == "gridshare"
    assert service["Restart"] == "on-failure"
    assert service["RestartPreventExitStatus"] == "2"  # a bad site file exits 2
    assert "MemoryDenyWriteExecute" not in service  # numba's JIT needs W+X memory
    assert service["Environment"].startswith("NUMBA_CACHE_DIR=") or \
        "NUMBA_CACHE_DIR=/var/cache/gridshare" in UNIT.read_text(encoding="utf-8")
    assert _unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """systemd's own checker on the shipped unit (scripts/setup installs it when missing)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: install Debian's systemd package")
    # The unit names /opt/gridshare/bin/gridshare, which verify wants to exist: point it at
    # this checkout's entry point, and check nothing else.
    program = Path(sys.executable).parent / "gridshare"
    assert program.exists()
    unit = tmp_path / "gridshare.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(
        "/opt/gridshare/bin/gridshare", str(program)), encoding="utf-8")
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "gridshare.service" not in done.stderr, done.stderr


# --- the container ----------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text(encoding="utf-8"))
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_container_runs_gridshare_serve() -> None:
    steps = _instructions()
    assert next(a for w, a in steps if w == "FROM").startswith("python:3.11-slim")
    last = dict(steps)  # the last of each instruction is the one in force
    argv = json.loads(last["ENTRYPOINT"]) + json.loads(last["CMD"])
    assert argv[0] == "gridshare"
    _check_gridshare_argv(argv[1:], "ENTRYPOINT + CMD")
    assert set(last["EXPOSE"].split()) == {"9000", "8080"}
    assert last["USER"] not in ("root", "0")
    assert "8080/status" in last["HEALTHCHECK"]


def test_the_container_copies_files_that_exist() -> None:
    ignore = (ROOT / ".containerignore").read_text(encoding="utf-8")
    # podman reads .containerignore, docker build -f Containerfile its own copy
    assert (ROOT / "Containerfile.dockerignore").read_text(encoding="utf-8") == ignore
    ignored = ignore.splitlines()
    allowed = {line[1:].rstrip("/") for line in ignored if line.startswith("!")}
    for word, args in _instructions():
        if word != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert source.rstrip("/").removeprefix("./") in allowed, \
                f"COPY {source}: excluded by .containerignore"


# --- certificates -----------------------------------------------------------------------


def _cert_script() -> str:
    text = (GUIDE / "chargers.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- tests/test_guide.py runs the next block[^>]*-->\s*```bash\n"
                      r"(.*?)^```", text, re.M | re.S)
    assert found, "the certificate block of chargers.md is gone"
    return found.group(1)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext,
               hostname: str) -> dict[str, Any]:
    """A TLS handshake in memory; the server's view of the client certificate."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    done = {"srv": False, "cli": False}
    for _ in range(20):
        for name, end in (("cli", cli), ("srv", srv)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            peer = srv.getpeercert()
            assert isinstance(peer, dict)
            return peer
    raise AssertionError("the handshake did not finish")


def test_the_certificate_commands_make_a_working_mutual_tls_setup(tmp_path: Path) -> None:
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", _cert_script()], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "server.pem: OK" in done.stdout
    site = next(t for _, t in _site_blocks() if "security_profile: 3" in t)
    (tmp_path / "site.yaml").write_text(site, encoding="utf-8")
    config = load_site_config(tmp_path / "site.yaml")  # the tls: paths exist
    tls = config.ocpp.tls
    assert tls is not None and tls.cafile is not None
    server = server_ssl_context(TlsConfig(tls.certfile, tls.keyfile, tls.cafile),
                                require_client_cert=True)
    for charger in ("garage-1", "garage-2"):
        client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        client.load_cert_chain(tmp_path / f"{charger}.pem", tmp_path / f"{charger}.key")
        for host in ("gridshare.local", "192.168.1.10"):  # the SAN has both
            assert common_name(_handshake(server, client, host)) == charger
    client = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    client.load_cert_chain(tmp_path / "garage-1.pem", tmp_path / "garage-1.key")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server, client, "elsewhere.local")
