"""AMI meters and the telemetry: block in the site file: one pass, file:line, all of them."""

from __future__ import annotations

import pytest

from gridshare.config import ConfigError, TelemetrySpec, parse_site_config

HEAD = """site: s1
mqtt: {url: "mqtt://127.0.0.1:1883"}
groups:
  - {id: main, max_current: 100, meter: house}
meters:
  - {id: house, source: mqtt, topic: home/meter}
"""


def test_ami_meters_apart_from_group_meters() -> None:
    config = parse_site_config(HEAD + """\
  - {id: m-1, feeder: F1, substation: S1, region: north}
  - {id: m-2, region: south}
telemetry: {window: 300, lateness: 60, ami_prefix: utility/ami}
""")
    assert [m.id for m in config.meters] == ["house"]
    assert [(m.id, m.feeder, m.substation, m.region) for m in config.ami_meters] == [
        ("m-1", "F1", "S1", "north"), ("m-2", None, None, "south")]
    spec = config.telemetry
    assert spec is not None and spec.window == 300 and spec.lateness == 60
    assert spec.ami_topic_prefix("s1") == "utility/ami"
    assert spec.stations_topic_prefix("s1") == "gridshare/s1/stations"
    assert spec.session_client_id("s1") == "gridshare-telemetry-s1"


def test_defaults() -> None:
    spec = TelemetrySpec()
    assert (spec.qos, spec.window, spec.lateness, spec.clock_skew, spec.batch_rows,
            spec.batch_interval) == (1, 60.0, 30.0, 30.0, 1000, 0.05)


def test_every_problem_with_its_line() -> None:
    text = """site: s1
groups:
  - {id: main, max_current: 100, meter: m-1}
telemetry: {window: 0, ami_prefix: "a/#"}
meters:
  - {id: m-1, feeder: F1}
  - {id: m-2}
  - {id: m-3, feeder: F1, topic: x}
  - {id: m-4, source: mqtt, topic: a/b, feeder: F2}
  - {id: m-1, region: r}
"""
    with pytest.raises(ConfigError) as info:
        parse_site_config(text, "site.yaml")
    found = {(i.line, i.path): i.message for i in info.value.issues}
    assert "AMI meter" in found[(3, "groups[0].meter")]
    assert "greater than or equal to 1" in found[(4, "telemetry.window")]
    assert (4, "telemetry.ami_prefix") in found
    assert "needs the site's mqtt" in found[(4, "telemetry")]
    assert "feeder/substation/region" in found[(7, "meters[1]")]
    assert "topic: not used by an AMI meter" in found[(8, "meters[2]")]
    assert "leave out source" in found[(9, "meters[3]")]
    assert "duplicate meter id 'm-1'" in found[(10, "meters[4].id")]


def test_100000_meters_load() -> None:
    """All of them, each with its levels (the time it takes: ``python
    benchmarks/bench_ingest.py config --meters 100000``)."""
    lines = [HEAD]
    lines += [f"  - {{id: m-{i:06d}, feeder: F{i % 500}, substation: S{i % 50}, "
              f"region: R{i % 5}}}\n" for i in range(100_000)]
    text = "".join(lines)
    config = parse_site_config(text)
    assert len(config.ami_meters) == 100_000
    assert config.ami_meters[-1].id == "m-099999"
    assert (config.ami_meters[12_345].feeder, config.ami_meters[12_345].substation,
            config.ami_meters[12_345].region) == ("F345", "S45", "R0")
