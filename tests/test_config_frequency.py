"""The site file's ``frequency_response:`` block (issue 10, part 1)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gridshare.config import (
    ConfigError,
    FrequencyResponseSpec,
    parse_site_config,
    site_warnings,
)
from gridshare.core.frequency import FrequencySettings, UnitKind, UnitSpec

SITE = textwrap.dedent("""\
    site: depot
    mqtt: {url: "mqtt://127.0.0.1:1883"}
    frequency_response:
      nominal_hz: 60
      deadband_mhz: 20
      full_activation_mhz: 200
      safety_window_hz: [59.5, 60.5]
      mode: central
      source: {mqtt_topic: "gridshare/depot/grid/frequency"}
      units:
        - {charger: v2g-1, max_discharge_kw: 10, max_charge_kw: 11, capacity_kwh: 60,
           min_soc: 40, max_cycles_per_day: 2}
        - {battery: bess-1, max_discharge_kw: 50, max_charge_kw: 50, capacity_kwh: 100,
           min_soc: 10, setpoint_topic: "site/bess-1/setpoint", soc_topic: "site/bess-1/soc"}
    groups:
      - id: main
        max_current: 100
        chargers: [v2g-1, ac-1]
    chargers:
      - {id: v2g-1, max_current: 16}
      - {id: ac-1, max_current: 32}
    """)


def issues_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_site_config(text, "site.yaml")
    return [str(i) for i in info.value.issues]


def test_the_issue_block_loads_into_core_settings_and_units() -> None:
    spec = parse_site_config(SITE, "site.yaml").frequency_response
    assert spec is not None
    assert spec.mode == "central" and spec.source.mqtt_topic == "gridshare/depot/grid/frequency"
    assert spec.settings() == FrequencySettings(
        nominal_hz=60.0, deadband_hz=0.02, full_activation_hz=0.2, window_low_hz=59.5,
        window_high_hz=60.5, hysteresis_hz=0.005, stale_after_s=1.0, recover_after_s=5.0,
        endurance_s=900.0)
    assert [u.unit() for u in spec.units] == [
        UnitSpec("v2g-1", UnitKind.CHARGER, 10, 11, 60, 40, 100, 2),
        UnitSpec("bess-1", UnitKind.BATTERY, 50, 50, 100, 10, 100, None)]
    assert spec.units[1].setpoint_topic == "site/bess-1/setpoint"


def test_absent_block_is_none() -> None:
    text = SITE[:SITE.index("frequency_response:")] + SITE[SITE.index("groups:"):]
    assert parse_site_config(text, "site.yaml").frequency_response is None


@pytest.mark.parametrize(("old", "new", "where", "what"), [
    ("nominal_hz: 60", "nominal_hz: 55", "site.yaml:4: frequency_response.nominal_hz:",
     "50 or 60"),
    ("deadband_mhz: 20", "deadband_mhz: 300", "site.yaml:3: frequency_response:",
     "deadband_mhz 300 must be below full_activation_mhz 200"),
    ("[59.5, 60.5]", "[60.1, 60.5]", "site.yaml:3: frequency_response:",
     "must lie around nominal 60 Hz"),
    ("[59.5, 60.5]", "[49.5, 50.5]", "site.yaml:3: frequency_response:",
     "must lie around nominal 60 Hz"),
    ("[59.5, 60.5]", "[59.5]", "site.yaml:7: frequency_response.safety_window_hz[1]:",
     "Field required"),
    ("mode: central", "mode: remote", "site.yaml:8: frequency_response.mode:", "'remote'"),
    ("min_soc: 40", "min_soc: 140", "site.yaml:12: frequency_response.units[0].min_soc:",
     "less than or equal to 100"),
    ("capacity_kwh: 60", "capacity_kwh: .nan",
     "site.yaml:11: frequency_response.units[0].capacity_kwh:", "finite number"),
    ("{charger: v2g-1,", "{charger: v2g-1, battery: b,",
     "site.yaml:11: frequency_response.units[0]:", "one of them"),
    (', setpoint_topic: "site/bess-1/setpoint"', "",
     "site.yaml:13: frequency_response.units[1]:", "needs setpoint_topic and soc_topic"),
    ('mqtt_topic: "gridshare/depot/grid/frequency"', 'mqtt_topic: "grid/#"',
     "site.yaml:9: frequency_response.source.mqtt_topic:", "pattern"),
], ids=["nominal", "deadband", "window-off-nominal", "window-50", "window-short", "mode",
        "min-soc", "capacity-nan", "both-kinds", "battery-topics", "wildcard"])
def test_bad_values_named_with_file_line_and_path(old: str, new: str, where: str,
                                                 what: str) -> None:
    assert old in SITE
    msgs = issues_of(SITE.replace(old, new))
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith(where) and what in msgs[0], msgs


def test_hysteresis_must_be_inside_the_deadband() -> None:
    msgs = issues_of(SITE.replace("mode: central", "mode: central\n  hysteresis_mhz: 20"))
    assert msgs == ["site.yaml:3: frequency_response: hysteresis_mhz 20 must be below "
                    "deadband_mhz 20"]


def test_unknown_charger_and_duplicate_battery() -> None:
    text = SITE.replace("{charger: v2g-1,", "{charger: v2g-9,")
    units_end = text.index("groups:")
    dup = ('    - {battery: bess-1, max_discharge_kw: 5, max_charge_kw: 5, capacity_kwh: 10,\n'
           '       min_soc: 10, setpoint_topic: "a/b", soc_topic: "a/c"}\n')
    text = text[:units_end] + dup + text[units_end:]
    msgs = issues_of(text)
    assert msgs == [
        "site.yaml:11: frequency_response.units[0].charger: unknown charger 'v2g-9' "
        "(declare it under chargers:; chargers: ac-1, v2g-1)",
        "site.yaml:15: frequency_response.units[2].battery: unit 'bess-1' is listed twice "
        "(first at frequency_response.units[1])",
    ]


def test_battery_named_like_a_charger_and_kw_above_the_charger() -> None:
    text = (SITE.replace("{battery: bess-1,", "{battery: ac-1,")
            .replace("max_charge_kw: 11", "max_charge_kw: 22"))
    msgs = issues_of(text)
    assert msgs == [
        "site.yaml:11: frequency_response.units[0].max_charge_kw: max_charge_kw 22 kW is "
        "above charger 'v2g-1''s maximum of 11.04 kW",
        "site.yaml:13: frequency_response.units[1].battery: battery id 'ac-1' is also a "
        "charger id",
    ]


def test_mqtt_required_for_the_source() -> None:
    msgs = issues_of(SITE.replace('mqtt: {url: "mqtt://127.0.0.1:1883"}\n', ""))
    assert msgs == ["site.yaml:8: frequency_response.source.mqtt_topic: an mqtt_topic needs "
                    "the site's mqtt: {url: ...}"]


def test_frequency_problems_reported_with_every_other_problem() -> None:
    bad = (SITE.replace("min_soc: 40", "min_soc: -1")
           .replace("{id: ac-1, max_current: 32}", "{id: ac-1, max_current: -32}"))
    msgs = issues_of(bad)
    assert len(msgs) == 2, msgs
    assert msgs[0].startswith("site.yaml:12: frequency_response.units[0].min_soc:")
    assert msgs[1].startswith("site.yaml:21: chargers[1].max_current:")


def test_the_docs_example_is_a_valid_block() -> None:
    """docs/frequency.md's site-file example, with its optional defaults written out,
    reads as the defaults it claims."""
    doc = (Path(__file__).parents[1] / "docs" / "frequency.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    text = ("site: depot\n" + block
            + "groups:\n  - {id: main, max_current: 100, chargers: [v2g-1]}\n"
            + "chargers:\n  - {id: v2g-1, max_current: 16}\n")
    spec = parse_site_config(text, "docs/frequency.md").frequency_response
    assert spec is not None
    defaults = FrequencyResponseSpec.model_fields
    for name in ("hysteresis_mhz", "stale_after_s", "recover_after_s", "endurance_s"):
        assert getattr(spec, name) == defaults[name].default, name


def test_check_no_longer_warns_that_the_block_is_not_acted_on(tmp_path: Path) -> None:
    """The frequency service acts on the block now: no "not acted on" warning (an
    operator would otherwise believe the units do not answer the grid's frequency)."""
    site = tmp_path / "site.yaml"
    site.write_text(SITE)
    result = subprocess.run([sys.executable, "-m", "gridshare", "check", str(site), "--json"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    warnings = json.loads(result.stdout)["warnings"]
    assert not [w for w in warnings if w.startswith("frequency_response")], warnings
    assert site_warnings(parse_site_config(SITE.replace(
        SITE[SITE.index("frequency_response:"):SITE.index("groups:")], ""), "s.yaml")) == []
