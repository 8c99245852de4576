"""The site file's ``driver: openevse`` keys: checked in the one pass, with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridshare.config import ConfigError, load_site_config, parse_site_config

SITE = """\
site: home
mqtt: {url: "mqtt://127.0.0.1:1883"}
groups:
  - {id: main, max_current: 32, chargers: [garage, drive]}
chargers:
  - id: garage
    max_current: 32
    driver: openevse
    openevse: {url: "http://192.168.1.50", mqtt_base: openevse-1a2b, username: admin,
               password_file: box.pw}
  - {id: drive, max_current: 32}
"""


def test_defaults_and_values() -> None:
    config = parse_site_config(SITE, "home.yaml")
    (cid, box), = config.openevse.items()
    assert cid == "garage"
    assert (box.url, box.mqtt_base, box.claim_client, box.heartbeat_s, box.safe_current_a,
            box.offline_after_s, box.timeout_s) == (
        "http://192.168.1.50", "openevse-1a2b", 18259, 10.0, 0.0, 120.0, 5.0)
    assert "drive" not in config.openevse


def test_password_file_relative_to_the_site_file(tmp_path: Path) -> None:
    path = tmp_path / "home.yaml"
    path.write_text(SITE)
    assert load_site_config(path).openevse["garage"].password_file == tmp_path / "box.pw"


@pytest.mark.parametrize(("edit", "line", "message"), [
    (("driver: openevse\n", "driver: tesla\n"), 8, "chargers[0].driver"),
    (("    openevse: {url", "    openevse_: {url"), 9, "openevse_"),
    (("http://192.168.1.50", "ftp://box"), 9, "openevse.url"),
    (("mqtt_base: openevse-1a2b", "mqtt_base: 'a/#'"), 9, "openevse.mqtt_base"),
    (("username: admin", "heartbeat_s: 0"), 9, "heartbeat_s"),
    (("{id: drive, max_current: 32}", "{id: drive, max_current: 32, openevse: {url: "
      "'http://x', mqtt_base: b}}"), 11, "not openevse"),
])
def test_errors_name_file_and_line(edit: tuple[str, str], line: int, message: str) -> None:
    text = SITE.replace(*edit)
    assert text != SITE
    with pytest.raises(ConfigError) as info:
        parse_site_config(text, "home.yaml")
    out = str(info.value)
    assert f"home.yaml:{line}" in out and message in out, out


def test_needs_the_mqtt_broker() -> None:
    with pytest.raises(ConfigError) as info:
        parse_site_config(SITE.replace('mqtt: {url: "mqtt://127.0.0.1:1883"}\n', ""),
                          "home.yaml")
    assert "home.yaml:7" in str(info.value)  # the driver: line
    assert "driver openevse needs the site's mqtt:" in str(info.value)


def test_driver_without_its_block() -> None:
    text = SITE.replace("{id: drive, max_current: 32}", "{id: drive, max_current: 32, "
                                                          "driver: openevse}")
    with pytest.raises(ConfigError) as info:
        parse_site_config(text, "home.yaml")
    assert "home.yaml:11" in str(info.value) and "needs openevse:" in str(info.value)


def test_serve_runs_the_boxes_with_the_openevse_driver() -> None:
    """``gridshare serve`` builds its options from the file: the box goes to the OpenEVSE
    driver (and is no OCPP charger), the other charger stays with the CSMS."""
    from gridshare.adapters.router import DriverRouter
    from gridshare.app import build_app, serve_options

    config = parse_site_config(SITE, "home.yaml")
    options = serve_options(config, db_url="none", api_port=None)
    assert options.openevse == config.openevse
    app = build_app(config.topology, options)
    assert app.openevse is not None and app.openevse.chargers == {"garage"}
    router = app.controller.driver
    assert isinstance(router, DriverRouter)
    assert router.driver("garage") is app.openevse and router.driver("drive") is app.csms
    assert "garage" not in app.csms.config.chargers and "drive" in app.csms.config.chargers
