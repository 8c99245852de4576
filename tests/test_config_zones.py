"""Zones, station kW limits and demand-response settings in the site file (issue 9)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gridshare.config import ConfigError, DemandResponseSpec, load_site_config, parse_site_config
from gridshare.core.dr.curtail import CurtailPolicy
from gridshare.core.topology import ConnectorType, Zone

PLAZA = textwrap.dedent("""\
    site: plaza
    voltage: 230
    zones:
      - {id: Z1, capacity_kw: 3000}
      - {id: Z2}
    demand_response:
      policy: priority
      confirm_within: 20
      tolerance_kw: 1.5
    groups:
      - id: main
        max_power: 3000
        chargers: [dc-1, dc-2, ac-1]
    chargers:
      - id: dc-1
        max_power: 200
        min_current: 0
        zone: Z1
        max_station_kw: 200
        contract_max_kw: 180
        connectors:
          - {type: CCS, max_power: 150}
          - {type: CHAdeMO, max_power: 50}
      - id: dc-2
        max_power: 150
        zone: Z2
        connectors:
          - {type: CCS, max_power: 150}
      - id: ac-1
        max_current: 32
""")


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_site_config(text, "site.yaml")
    return [str(i) for i in info.value.issues]


def test_zones_station_limits_and_settings_load() -> None:
    config = parse_site_config(PLAZA, "site.yaml")
    topo = config.topology
    assert dict(topo.zones) == {"Z1": Zone("Z1", 3000.0), "Z2": Zone("Z2", None)}
    dc1 = topo.chargers["dc-1"]
    assert (dc1.zone, dc1.max_station_kw, dc1.contract_max_kw) == ("Z1", 200.0, 180.0)
    assert [c.type for c in dc1.connectors] == [ConnectorType.CCS, ConnectorType.CHADEMO]
    assert topo.chargers["dc-2"].zone == "Z2"
    ac1 = topo.chargers["ac-1"]
    assert (ac1.zone, ac1.max_station_kw, ac1.contract_max_kw) == (None, None, None)
    assert topo.zone_chargers("Z1") == ["dc-1"]
    assert config.demand_response == DemandResponseSpec(
        policy=CurtailPolicy.PRIORITY, confirm_within=20.0, tolerance_kw=1.5)


def test_demand_response_defaults_and_no_zones() -> None:
    text = PLAZA.split("groups:")[0].split("zones:")[0] + "groups:" + PLAZA.split(
        "groups:")[1]
    for line in ("    zone: Z1\n", "    zone: Z2\n"):
        text = text.replace(line, "")
    config = parse_site_config(text, "site.yaml")
    assert dict(config.topology.zones) == {}
    assert config.demand_response == DemandResponseSpec()
    assert (config.demand_response.policy, config.demand_response.confirm_within,
            config.demand_response.tolerance_kw) == (CurtailPolicy.PROPORTIONAL, 30.0, 0.5)


def test_unknown_zone_is_named_with_file_line_and_path() -> None:
    msgs = issues_of(PLAZA.replace("zone: Z2", "zone: Z9"))
    assert msgs == ["site.yaml:26: chargers[1].zone: unknown zone 'Z9' (declare it under "
                    "zones:; zones: Z1, Z2)"]


def test_a_zone_without_zones_declared() -> None:
    text = PLAZA.replace("  - {id: Z1, capacity_kw: 3000}\n  - {id: Z2}\n", "  []\n")
    msgs = issues_of(text)
    assert len(msgs) == 2
    assert all("unknown zone" in m and "none declared" in m for m in msgs), msgs


def test_every_bad_value_in_one_pass() -> None:
    bad = (PLAZA
           .replace("{id: Z1, capacity_kw: 3000}", "{id: Z1, capacity_kw: -3}")
           .replace("{id: Z2}", "{id: Z1}")
           .replace("policy: priority", "policy: loudest")
           .replace("confirm_within: 20", "confirm_within: 0")
           .replace("tolerance_kw: 1.5", "tolerance_kw: .nan")
           .replace("max_station_kw: 200", "max_station_kw: 0")
           .replace("contract_max_kw: 180", "contract_max_kw: lots")
           .replace("zone: Z2", "zone: Z7"))
    msgs = issues_of(bad)
    expected = [
        ("site.yaml:4: zones[0].capacity_kw:", "greater than 0"),
        ("site.yaml:5: zones[1].id:", "duplicate zone id 'Z1' (first at zones[0])"),
        ("site.yaml:7: demand_response.policy:", "'loudest'"),
        ("site.yaml:8: demand_response.confirm_within:", "greater than 0"),
        ("site.yaml:9: demand_response.tolerance_kw:", "finite number"),
        ("site.yaml:19: chargers[0].max_station_kw:", "greater than 0"),
        ("site.yaml:20: chargers[0].contract_max_kw:", "valid number"),
        ("site.yaml:26: chargers[1].zone:", "unknown zone 'Z7'"),
    ]
    assert len(msgs) == len(expected), msgs
    for msg, (where, what) in zip(msgs, expected, strict=True):
        assert msg.startswith(where) and what in msg, (msg, where, what)


def test_a_charger_that_fails_validation_still_has_its_zone_checked() -> None:
    bad = PLAZA.replace("max_station_kw: 200", "max_station_kw: -1").replace(
        "zone: Z1", "zone: nowhere")
    msgs = issues_of(bad)
    assert any(m.startswith("site.yaml:18: chargers[0].zone: unknown zone 'nowhere'")
               for m in msgs), msgs
    assert any("chargers[0].max_station_kw" in m for m in msgs), msgs


@pytest.mark.parametrize(("edit", "expected"), [
    (("  - {id: Z2}\n", "  - {id: Z2, colour: red}\n"), "zones[1].colour: Extra inputs"),
    (("  - {id: Z2}\n", "  - {capacity_kw: 5}\n"), "zones[1].id: Field required"),
    (("  - {id: Z2}\n", "  - Z2\n"), "zones[1]: expected a mapping"),
    (("zones:\n", "zones: 5\nnothing:\n"), "zones: expected a list"),
    (("  tolerance_kw: 1.5\n", "  tolerance_kw: -1\n"), "demand_response.tolerance_kw"),
    (("  confirm_within: 20\n", "  confirm_within: 7200\n"), "demand_response.confirm_within"),
    (("  policy: priority\n", "  policy: priority\n  colour: red\n"),
     "demand_response.colour: Extra inputs"),
    (("    zone: Z1\n", "    zone: 'a zone'\n"), "chargers[0].zone"),
])
def test_each_zone_mistake_is_named(edit: tuple[str, str], expected: str) -> None:
    msgs = issues_of(PLAZA.replace(*edit))
    assert any(expected in m for m in msgs), msgs
    assert all(m.startswith("site.yaml:") for m in msgs), msgs


def test_openadr_settings_load_and_name_only_declared_zones(tmp_path: Path) -> None:
    ven = PLAZA.replace("  tolerance_kw: 1.5\n", textwrap.indent(textwrap.dedent("""\
        tolerance_kw: 1.5
        openadr:
          vtn_url: http://127.0.0.1:8080/OpenADR2/Simple/2.0b
          ven_name: plaza-ven
          zone: Z1
          targets: {feeder-7: Z3}
          cert: certs/ven.pem
        """), "  "))
    problems = issues_of(ven)
    assert len(problems) == 1
    assert "demand_response.openadr.targets.feeder-7" in problems[0]
    assert "unknown zone 'Z3'" in problems[0]
    good = ven.replace("Z3}", "Z2}")
    site = tmp_path / "site.yaml"
    site.write_text(good)
    openadr = load_site_config(site).demand_response.openadr
    assert openadr is not None
    assert (openadr.zone, openadr.targets) == ("Z1", {"feeder-7": "Z2"})
    assert openadr.cert == tmp_path / "certs" / "ven.pem"  # relative to the site file
