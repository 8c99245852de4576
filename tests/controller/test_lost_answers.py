"""The scenarios of issue 6, replayed second by second against modeled chargers: a group
limit must hold when answers are lost, late or refused."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from gridshare.clock import FakeClock
from gridshare.config import parse_site
from gridshare.controller.loop import ControllerSettings
from gridshare.drivers import CommandResult
from gridshare.events import ChargerOffline

from .charger_model import Rig
from .conftest import T0

SITE = """
site: pair
voltage: 230
groups:
  - {id: g, max_current: 32, chargers: [p, q]}
chargers:
  - {id: p, max_current: 32, phases: 3, failsafe_current: 6}
  - {id: q, max_current: 32, phases: 3, failsafe_current: 6}
"""
SETTINGS = ControllerSettings(lease_s=60.0, renew_fraction=0.5, settle_s=5.0, tick_s=None,
                              debounce_s=0.0, retry_backoff_s=1.0, retry_backoff_max_s=8.0)


@pytest.fixture
async def rig() -> Rig:
    rig = Rig(parse_site(SITE, "pair.yaml"), SETTINGS, FakeClock(T0))
    for cid in ("p", "q"):
        rig.boot(cid)
    await rig.answer_all()
    rig.plug("p")
    rig.plug("q")
    await rig.answer_all()
    rig.clock.advance(6)  # past the settle windows of the idle holds
    await rig.answer_all()
    assert (rig.sent_to("p")[-1], rig.sent_to("q")[-1]) == (16.0, 16.0)
    assert rig.overloads() == []
    return rig


async def run_for(rig: Rig, seconds: int, *, silent: tuple[str, ...] = ()) -> list[str]:
    """Advance second by second, chargers in ``silent`` answering nothing (what reaches
    them is lost before it applies); every overload seen on the way."""
    seen: list[str] = []
    for _ in range(seconds):
        rig.clock.advance(1)
        await rig.cycle()
        for cid in silent:
            while rig.driver.head(cid) is not None:
                rig.driver.lose(cid, applied=False, result=CommandResult.TIMEOUT)
        await rig.answer_all(except_=silent)
        seen += rig.overloads()
    return seen


async def went_silent(rig: Rig, charger_id: str) -> None:
    """Its heartbeat allowance over, the charger is known offline; what we sent it while it
    was half-open may still apply until each command's validTo (a lease): no overload on
    the way."""
    rig.driver.drop_link(charger_id, head_applied=False)
    rig.controller.handle(ChargerOffline(charger_id, rig.clock.now(), "silent"))
    assert await run_for(rig, 61) == []


async def test_renewal_applied_then_link_drops_other_not_raised_before_its_valid_to(
        rig: Rig) -> None:
    """16/16 A on 32 A. p applies its lease renewal and its link drops before the answer:
    p obeys 16 A until the renewal's validTo, so q may not rise to 26 A before then."""
    await run_for(rig, 23)
    rig.clock.advance(1)  # t = 30: the renewals go out
    await rig.cycle()
    head = rig.driver.head("p")
    assert head is not None and head.current_a == 16.0
    assert head.valid_to == T0 + timedelta(seconds=90)
    rig.driver.drop_link("p", head_applied=True)
    rig.controller.handle(ChargerOffline("p", rig.clock.now(), "connection lost"))
    await rig.answer_all()
    assert await run_for(rig, 59) == []  # t = 89
    assert max(rig.sent_to("q")) == 16.0
    assert rig.driver.chargers["p"].obeys(1, rig.clock.now()) == 16.0
    assert await run_for(rig, 1) == []  # t = 90: p's renewal has lapsed to its 6 A
    assert rig.sent_to("q")[-1] == 16.0  # failsafe, but p's car follows within settle_s
    assert await run_for(rig, 4) == []
    assert rig.sent_to("q")[-1] == 16.0
    assert await run_for(rig, 1) == []  # t = 95
    assert rig.sent_to("q")[-1] == 26.0


async def test_half_open_link_after_an_unconfirmed_raise(rig: Rig) -> None:
    """q's car leaves, p is raised to 32 A and applies it, but the link is half-open: the
    answer never comes, nor does anything after it. When q's car returns, q must wait
    until p's raise has lapsed."""
    rig.unplug("q")
    await rig.cycle()
    await rig.answer_all(except_=("p",))  # q is held at 0 A: now p's raise goes
    head = rig.driver.head("p")
    assert head is not None and head.current_a == 32.0
    rig.driver.lose("p", applied=True, result=CommandResult.TIMEOUT)
    rig.driver.chargers["p"].link = "half"
    rig.plug("q")
    assert await run_for(rig, 30, silent=("p",)) == []
    assert rig.sent_to("q")[-1] == 0.0  # p may obey 32 A until its raise lapses
    await went_silent(rig, "p")
    assert rig.driver.chargers["p"].obeys(1, rig.clock.now()) == 6.0  # lapsed at last
    assert rig.sent_to("q")[-1] == 26.0  # p counted at its failsafe


async def test_newer_setpoint_never_forgets_an_unanswered_raise(rig: Rig) -> None:
    """p is raised to 32 A; before any answer, q's car returns and p is told 16 A. The 32 A
    is applied with its answer lost, and the 16 A never arrives: p obeys 32 A until its
    validTo, so q stays down."""
    rig.unplug("q")
    await rig.cycle()
    await rig.answer_all(except_=("p",))
    head = rig.driver.head("p")
    assert head is not None and head.current_a == 32.0
    rig.plug("q")
    await rig.cycle()
    assert [f.current_a for f in rig.driver.chargers["p"].frames] == [32.0, 16.0]
    rig.driver.lose("p", applied=True, result=CommandResult.TIMEOUT)
    rig.driver.lose("p", applied=False, result=CommandResult.TIMEOUT)
    await rig.spin()
    p = rig.controller.status().connectors[0]
    assert (p.counted_a, p.setpoint_a, p.uncertain) == (32.0, 16.0, True)
    assert rig.controller.status().groups[0].counted_a == (32.0, 32.0, 32.0)  # q held at 0
    assert [(c.current_a, c.result) for c in p.commands] == [(32.0, "timeout"),
                                                           (16.0, "timeout")]
    data = json.loads(json.dumps(rig.controller.status().to_dict()))
    assert data["connectors"][0]["commands"][0] == {
        "current_a": 32.0, "result": "timeout",
        "valid_to": (T0 + timedelta(seconds=66)).isoformat()}
    assert await run_for(rig, 30, silent=("p",)) == []
    await went_silent(rig, "p")
    assert rig.sent_to("q")[-1] == 26.0


async def test_rejected_raise_counts_the_profile_in_force_with_an_alarm(rig: Rig) -> None:
    """q's car leaves and p is raised to 32 A, which p refuses: p is counted at its 16 A
    still in force (not at 32 A), and the refusal is an alarm in the status."""
    rig.unplug("q")
    await rig.cycle()
    await rig.answer_all(except_=("p",))
    rig.driver.answer("p", accept=False)
    await rig.spin()
    status = rig.controller.status()
    assert status.connectors[0].counted_a == 16.0
    assert [a.kind for a in status.alarms] == ["rejected"]
    assert rig.overloads() == []


async def test_an_answer_processed_after_the_boot_it_preceded_is_void(rig: Rig) -> None:
    """q's car leaves; p is raised to 32 A and accepts, but we process that answer only
    after p's reboot (frame numbers say it came before): p is at its 6 A failsafe, and the
    32 A is not believed live."""
    rig.unplug("q")
    await rig.cycle()
    await rig.answer_all(except_=("p",))
    rig.driver.answer("p", late=True)
    rig.boot("p")
    await rig.spin()
    rig.driver.deliver_late("p")
    await rig.spin()
    assert rig.controller.state.in_force_a(("p", 1), rig.clock.now()) is None
    assert rig.controller.counters["setpoint_void"] == 1
    await rig.answer_all()
    assert rig.sent_to("p")[-1] == 32.0  # sent again after the boot
    assert rig.overloads() == []
