"""Site YAML validation: every error names the file, the line, the path and the problem."""

from __future__ import annotations

import gc
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gridshare import config as config_module
from gridshare.config import (
    ConfigError,
    failsafe_warnings,
    load_site,
    parse_site,
    parse_site_config,
)
from gridshare.core.topology import Phase, Policy

GOOD = textwrap.dedent("""\
    site: carport            # site id
    voltage: 230
    policy: equal
    groups:
      - id: service
        max_current: 100
        phases: 3
        meter: site-meter
        groups:
          - id: circuit-1
            max_current: 40
            policy: priority
            chargers: [cp-1, cp-2]
    chargers:
      - id: cp-1
        max_current: 32
        min_current: 6
        phases: 1
        phase: L2
        failsafe_current: 6
        priority: 1
        connectors: 1
      - id: cp-2
        max_power: 50
        min_current: 0
        connectors:
          - {type: CCS, max_power: 50}
          - {type: CHAdeMO, max_power: 25}
    meters:
      - {id: site-meter, source: ocpp, charger: cp-1, connector: 0}
""")


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_site(text, "site.yaml")
    return [str(i) for i in info.value.issues]


def test_the_documented_format_loads() -> None:
    topo = parse_site(GOOD, "site.yaml")
    assert topo.site == "carport"
    assert topo.roots == ("service",)
    assert topo.groups["circuit-1"].parent == "service"
    assert topo.groups["circuit-1"].policy is Policy.PRIORITY
    assert topo.groups["service"].policy is Policy.EQUAL
    assert topo.groups["service"].meter == "site-meter"
    cp1 = topo.chargers["cp-1"]
    assert (cp1.phases, cp1.phase, cp1.failsafe_current, cp1.group) == (1, Phase.L2, 6, "circuit-1")
    assert topo.charger_groups("cp-1") == ("circuit-1", "service")
    cp2 = topo.chargers["cp-2"]
    # 50 kW at 3 x 230 V is 72.46 A per phase; the CHAdeMO side is capped at 25 kW.
    assert cp2.max_current == pytest.approx(50_000 / 690)
    assert [c.max_current for c in cp2.connectors] == pytest.approx([50_000 / 690, 25_000 / 690])
    assert [c.type.value for c in cp2.connectors if c.type] == ["CCS", "CHAdeMO"]


def test_negative_limit_names_file_line_and_path() -> None:
    bad = GOOD.replace("max_current: 40", "max_current: -5")
    [msg] = issues_of(bad)
    assert msg.startswith("site.yaml:11: groups[0].groups[0].max_current:")
    assert "greater than or equal to 0" in msg and "-5" in msg


def test_missing_limit_is_an_error_but_a_loose_child_limit_is_fine() -> None:
    [msg] = issues_of(GOOD.replace("        max_current: 40\n", ""))
    assert "groups[0].groups[0]" in msg and "needs max_current" in msg
    loose = parse_site(GOOD.replace("max_current: 40", "max_current: 400"))
    assert loose.groups["circuit-1"].max_current == 400


@pytest.mark.parametrize(("edit", "expected"), [
    (("chargers: [cp-1, cp-2]", "chargers: [cp-1, cp-2, cp-9]"), "unknown charger 'cp-9'"),
    (("chargers: [cp-1, cp-2]", "chargers: [cp-1, cp-2, cp-1]"), "already in group"),
    (("  - id: cp-2\n", "  - id: cp-1\n"), "duplicate charger id 'cp-1'"),
    (("- id: circuit-1", "- id: service"), "duplicate group id 'service'"),
    (("    min_current: 6\n", "    min_current: 40\n"), "min_current 40.0 A is above"),
    (("    phase: L2\n", "    phase: L4\n"), "chargers[0].phase"),
    (("    phase: L2\n", ""), "needs phase"),
    (("policy: priority", "policy: fastest"), "groups[0].groups[0].policy"),
    (("voltage: 230", "voltage: nan"), "voltage"),
    (("    priority: 1\n", "    priority: 1\n    colour: red\n"), "chargers[0].colour"),
])
def test_each_mistake_is_named(edit: tuple[str, str], expected: str) -> None:
    msgs = issues_of(GOOD.replace(*edit))
    assert any(expected in m for m in msgs), msgs
    assert all(m.startswith("site.yaml:") for m in msgs)


def test_cycle_through_parent_references() -> None:
    text = textwrap.dedent("""\
        site: s
        groups:
          - {id: a, max_current: 10, parent: b}
          - {id: b, max_current: 10, parent: a, chargers: [c]}
        chargers:
          - {id: c, max_current: 10}
        """)
    msgs = issues_of(text)
    assert any("cycle in group parents: a -> b -> a" in m for m in msgs), msgs


def test_flat_parent_form_builds_the_same_tree() -> None:
    text = textwrap.dedent("""\
        site: s
        groups:
          - {id: top, max_current: 63}
          - {id: sub, max_current: 32, parent: top, chargers: [c]}
        chargers:
          - {id: c, max_current: 16}
        """)
    topo = parse_site(text)
    assert topo.groups["top"].groups == ("sub",)
    assert topo.charger_groups("c") == ("sub", "top")


def test_all_problems_reported_at_once_with_lines() -> None:
    text = GOOD.replace("max_current: 100", "max_current: -1").replace(
        "min_current: 6", "min_current: -6")
    msgs = issues_of(text)
    assert len(msgs) == 2
    assert msgs[0].startswith("site.yaml:6:") and msgs[1].startswith("site.yaml:17:")


def test_duplicate_yaml_keys_and_broken_yaml() -> None:
    assert any("duplicate key" in m for m in issues_of(GOOD.replace(
        "voltage: 230", "voltage: 230\nvoltage: 400")))
    [msg] = issues_of("site: [unclosed\n")
    assert msg.startswith("site.yaml:") and "not valid YAML" in msg


def test_charger_in_no_group_and_three_phase_in_single_phase_group() -> None:
    msgs = issues_of(GOOD.replace("meters:\n", "  - {id: cp-3, max_current: 16}\nmeters:\n"))
    assert any("cp-3" in m and "in no group" in m for m in msgs)
    single = GOOD.replace("        policy: priority\n",
                          "        policy: priority\n        phases: 1\n")
    msgs = issues_of(single)
    assert any("3-phase charger 'cp-2' in 1-phase group" in m for m in msgs)


def test_load_site_reads_files_and_reports_missing_ones(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(GOOD)
    assert load_site(path).site == "carport"
    with pytest.raises(ConfigError, match="cannot read"):
        load_site(tmp_path / "nope.yaml")


def test_failsafe_warning_when_all_offline_would_overload() -> None:
    topo = parse_site(GOOD.replace("failsafe_current: 6", "failsafe_current: 30").replace(
        "max_current: 40", "max_current: 20"))
    [warning] = failsafe_warnings(topo)
    assert "circuit-1" in warning and "30 A on L2" in warning


def test_ocpp_section_security_needs_tls_and_passwords() -> None:
    msgs = issues_of(GOOD + "ocpp:\n  security_profile: 2\n")
    assert any("ocpp: security_profile 2 needs tls" in m for m in msgs), msgs
    msgs = issues_of(GOOD + "ocpp:\n  security_profile: 1\n")
    assert any("chargers[0].id" in m and "needs a password_hash for 'cp-1'" in m for m in msgs)
    assert issues_of(GOOD + "ocpp:\n  security_profile: 7\n")[0].startswith("site.yaml:")


def test_ocpp_section_becomes_csms_settings(tmp_path: Path) -> None:
    from gridshare.adapters.ocpp import hash_password, verify_password
    from gridshare.app import csms_settings
    from gridshare.config import load_site_config

    (tmp_path / "server.pem").write_text("x")
    (tmp_path / "server.key").write_text("x")
    hashed = hash_password("correct horse battery")
    line = f"    password_hash: '{hashed}'\n"
    text = GOOD.replace("    connectors: 1\n", "    connectors: 1\n" + line)
    text = text.replace("  - id: cp-2\n", "  - id: cp-2\n" + line)
    path = tmp_path / "site.yaml"
    path.write_text(text + "ocpp:\n  security_profile: 2\n  lease: 120\n  heartbeat_interval: 30\n"
                    "  tls: {certfile: server.pem, keyfile: server.key}\n")
    csms = csms_settings(load_site_config(path))
    assert csms.security_profile == 2 and csms.lease_s == 120 and csms.heartbeat_interval_s == 30
    assert csms.tls is not None and Path(csms.tls.certfile) == tmp_path / "server.pem"
    assert set(csms.chargers) == {"cp-1", "cp-2"} and not csms.allow_auto_register
    assert verify_password("correct horse battery", csms.chargers["cp-1"].password_hash or "")
    (tmp_path / "server.key").unlink()
    with pytest.raises(ConfigError, match="no such file"):
        load_site_config(path)


# --- reading YAML once: the fast reader gives safe_load's data and today's messages -------

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12),
    st.floats(allow_nan=False), st.text(max_size=12))
yaml_documents = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8) | st.integers(), inner,
                                            max_size=4)),
    max_leaves=25)


@given(yaml_documents, st.booleans())
def test_fast_reader_builds_what_safe_load_builds(data: object, flow: bool) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, allow_unicode=True)
    read, repeated = config_module._read_yaml(text)
    assert read == yaml.safe_load(text)
    assert not repeated


@pytest.mark.parametrize("text", [
    pytest.param("a: 010\nb: 0x1F\nc: 1_000\nd: 1:30\ne: -0\nf: +7\n", id="yaml-1.1-ints"),
    pytest.param("a: .inf\nb: -.Inf\nc: 1_0.5\nd: 6.\ne: 1e3\nf: 3.0e+2\n", id="floats"),
    pytest.param("a: yes\nb: Off\nc: ~\nd: null\ne: ''\nf:\n", id="bools-and-nulls"),
    pytest.param("a: 2026-11-22\nb: 2026-11-22T08:00:00Z\n", id="timestamps"),
    pytest.param("a: '1'\nb: \"0x1F\"\nc: !!str 5\nd: !!float 2\n", id="quoted-and-tagged"),
    pytest.param("base: &b {x: 1, y: [1, 2]}\ncopy: *b\n", id="anchor-and-alias"),
    pytest.param("base: &b {x: 1}\nmerged: {<<: *b, y: 2}\n", id="merge-key"),
    pytest.param("just a scalar\n", id="scalar-document"),
    pytest.param("", id="empty"),
    pytest.param("- a\n- - b\n  - {c: [d, {e: f}]}\n", id="nesting"),
])
def test_fast_reader_edge_cases_match_safe_load(text: str) -> None:
    read, _ = config_module._read_yaml(text)
    assert read == yaml.safe_load(text)
    assert type(read) is type(yaml.safe_load(text))


def test_fast_reader_fails_where_safe_load_fails() -> None:
    for text in ("a: 1\n---\nb: 2\n", "a: !!python/name:os.system x\n", "a: *nowhere\n",
                 "? [a, b]\n: c\n"):
        with pytest.raises(yaml.YAMLError):
            yaml.safe_load(text)
        with pytest.raises(yaml.YAMLError):
            config_module._read_yaml(text)


@pytest.mark.parametrize("text", [
    pytest.param("site: [unclosed\n", id="parser"),
    pytest.param("site: x\n\tgroups: []\n", id="scanner"),
    pytest.param("site: *nowhere\n", id="composer-undefined-alias"),
    pytest.param("site: a\n---\nsite: b\n", id="composer-two-documents"),
    pytest.param("site: !!python/name:os.system x\n", id="constructor-unknown-tag"),
    pytest.param("site: a\n? [x]\n: y\n", id="constructor-unhashable-key"),
])
def test_yaml_errors_keep_the_pure_python_wording(text: str) -> None:
    """libyaml says "did not find expected ..."; the file's author sees the same words
    and line as before the fast parser."""
    with pytest.raises(yaml.MarkedYAMLError) as pure:
        yaml.load(text, Loader=yaml.SafeLoader)
    [msg] = issues_of(text)
    assert pure.value.problem_mark is not None
    assert msg == (f"site.yaml:{pure.value.problem_mark.line + 1}: "
                   f"not valid YAML: {pure.value.problem}")


def node_lines(node: yaml.Node, loc: tuple[str | int, ...],
               out: dict[tuple[str | int, ...], int]) -> None:
    """Reference: every path's line from the pure-Python composer's node tree (a mapping
    entry at its key's line)."""
    out.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out.setdefault((*loc, str(key.value)), key.start_mark.line + 1)
            node_lines(value, (*loc, str(key.value)), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            node_lines(item, (*loc, i), out)


def test_line_numbers_from_libyaml_events_match_the_pure_python_parser() -> None:
    text = GOOD + "ocpp:\n  tls: {certfile: a.pem,\n        keyfile: b.key}\n  lease: 60\n"
    pure: dict[tuple[str | int, ...], int] = {}
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    assert root is not None
    node_lines(root, (), pure)
    fast, dups = config_module.scan_lines(text, set(pure), repeated=True)
    assert fast == pure and dups == []
    assert len(pure) > 40
    # only what is asked for, and nothing below a path that is not asked for
    some, _ = config_module.scan_lines(text, {(), ("groups",), ("groups", 0)},
                                        repeated=False)
    assert some == {(): 1, ("groups",): 4, ("groups", 0): 5}


def test_a_good_file_never_computes_line_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_line_scan(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("lines scanned for a good file")

    monkeypatch.setattr(config_module, "scan_lines", no_line_scan)
    assert parse_site(GOOD, "site.yaml").site == "carport"
    with pytest.raises(AssertionError, match="lines scanned"):
        parse_site(GOOD.replace("max_current: 40", "max_current: -5"), "site.yaml")


@pytest.mark.parametrize(("edit", "expected"), [
    (("voltage: 230", "voltage: 230\nvoltage: 400"), "site.yaml:3: voltage: duplicate key"),
    (("    phases: 3\n", "    phases: 3\n    phases: 1\n"),
     "site.yaml:8: groups[0].phases: duplicate key"),
    (("        max_current: 40\n", "        max_current: 40\n        'max_current': 40\n"),
     "site.yaml:12: groups[0].groups[0].max_current: duplicate key"),
    (("voltage: 230", "voltage: &v 230\nvoltage: *v"), "site.yaml:3: voltage: duplicate key"),
])
def test_repeated_keys_are_found_on_the_fast_path(edit: tuple[str, str], expected: str) -> None:
    """Quoted or not, with an alias or not: a key written twice is reported with its line,
    as the node walk reported it before the fast reader."""
    assert expected in issues_of(GOOD.replace(*edit))


def test_reading_leaves_the_garbage_collector_as_it_was() -> None:
    assert gc.isenabled()
    parse_site(GOOD)
    assert gc.isenabled()
    gc.disable()
    try:
        parse_site(GOOD)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(ConfigError):
        parse_site(GOOD.replace("max_current: 40", "max_current: -5"))
    assert gc.isenabled()


@pytest.mark.parametrize(("value", "expected"), [
    ("", "ocpp1.6"), ("  no_subprotocol: ocpp2.0.1\n", "ocpp2.0.1"),
    ("  no_subprotocol: null\n", None), ("  no_subprotocol: ocpp1.6\n", "ocpp1.6"),
])
def test_ocpp_no_subprotocol_setting(value: str, expected: str | None) -> None:
    config = parse_site_config(GOOD + "ocpp:\n  lease: 60\n" + value, "site.yaml")
    assert config.ocpp.no_subprotocol == expected


def test_ocpp_no_subprotocol_rejects_unknown_versions() -> None:
    [msg] = issues_of(GOOD + "ocpp:\n  no_subprotocol: ocpp2.1\n")
    assert msg == ("site.yaml:32: ocpp.no_subprotocol: Input should be 'ocpp1.6' or "
                   "'ocpp2.0.1' (got 'ocpp2.1')")


def test_no_subprotocol_reaches_the_csms_settings() -> None:
    from gridshare.app import csms_settings

    for value, expected in (("null", None), ("ocpp2.0.1", "ocpp2.0.1")):
        config = parse_site_config(GOOD + f"ocpp:\n  no_subprotocol: {value}\n", "site.yaml")
        assert csms_settings(config).no_subprotocol == expected
    assert csms_settings(parse_site_config(GOOD)).no_subprotocol == "ocpp1.6"


def test_serve_options_take_the_lease_and_csms_from_the_site_file() -> None:
    from gridshare.app import serve_options

    config = parse_site_config(GOOD + "ocpp:\n  lease: 90\n  command_timeout: 4\n")
    options = serve_options(config, host="127.0.0.1", ocpp_port=0, api_port=None,
                            db_url="none")
    assert options.controller.lease_s == 90
    assert options.csms is not None
    assert (options.csms.lease_s, options.csms.command_timeout_s) == (90, 4)
    assert (options.host, options.ocpp_port, options.api_port, options.db_url) == (
        "127.0.0.1", 0, None, "none")


def test_tls_paths_resolved_keep_the_meters_and_mqtt(tmp_path: Path) -> None:
    """Resolving the TLS files against the site file's folder used to drop meters: and mqtt:."""
    from gridshare.adapters.ocpp import hash_password
    from gridshare.config import load_site_config

    (tmp_path / "server.pem").write_text("x")
    (tmp_path / "server.key").write_text("x")
    line = f"    password_hash: '{hash_password('correct horse battery')}'\n"
    text = GOOD.replace("    connectors: 1\n", "    connectors: 1\n" + line)
    text = text.replace("  - id: cp-2\n", "  - id: cp-2\n" + line)
    path = tmp_path / "site.yaml"
    path.write_text(text + "mqtt: {url: 'mqtt://127.0.0.1:1883'}\nocpp:\n  security_profile: 2\n"
                    "  tls: {certfile: server.pem, keyfile: server.key}\n")
    config = load_site_config(path)
    assert [m.id for m in config.meters] == ["site-meter"]
    assert config.mqtt is not None and config.mqtt.url == "mqtt://127.0.0.1:1883"
    assert config.ocpp.tls is not None and config.ocpp.tls.certfile == tmp_path / "server.pem"


def test_the_line_scan_stops_once_every_wanted_path_is_behind_it() -> None:
    """The first problems of a huge file cost a scan of its start only; a repeated-key
    scan reads everything."""
    text = GOOD + "".join(f"# {i}\n" for i in range(10)) + "ocpp:\n  lease: [unclosed\n"
    lines, _ = config_module.scan_lines(text, {(), ("site",)}, repeated=False)
    assert lines == {(): 1, ("site",): 1}  # the broken end is never read
    with pytest.raises(yaml.YAMLError):
        config_module.scan_lines(text, {(), ("site",)}, repeated=True)


def test_mqtt_files_are_relative_to_the_site_file(tmp_path: Path) -> None:
    from gridshare.config import load_site_config

    site = tmp_path / "conf" / "site.yaml"
    site.parent.mkdir()
    site.write_text(GOOD.replace("meters:\n", "mqtt: {url: \"mqtt://127.0.0.1:1883\", "
                                 "username: gs, password_file: mqtt.pw, cafile: /etc/ca.pem}\n"
                                 "meters:\n"))
    config = load_site_config(site)
    assert config.mqtt is not None
    assert config.mqtt.password_file == site.parent / "mqtt.pw"
    assert config.mqtt.cafile == Path("/etc/ca.pem")  # absolute stays
    assert config.meters[0].id == "site-meter"  # nothing else lost on the way
