"""Domain groups (by domain and by MX suffix) and concurrency caps (Slots)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from mailpacer.pacing import DomainGroups, Pacer, Slots, parse_pacing


@pytest.mark.parametrize(
    ("domain", "mx", "group"),
    [
        ("gmail.com", None, "gmail"),
        ("Someone@GoogleMail.com.", None, "gmail"),
        ("hotmail.co.uk", None, "outlook"),
        ("live.de", None, "outlook"),
        ("msn.com", None, "outlook"),
        ("yahoo.co.jp", None, "yahoo"),
        ("aol.com", None, "yahoo"),
        ("me.com", None, "icloud"),
        ("mac.com", None, "icloud"),
        ("web.de", None, "gmx"),
        ("gmx.net", None, "gmx"),
        ("acme-corp.example", "aspmx.l.google.com", "gmail"),  # Google Workspace
        ("acme-corp.example", "ALT1.ASPMX.L.GOOGLE.COM.", "gmail"),
        ("contoso.example", "contoso-example.mail.protection.outlook.com", "outlook"),
        ("small.example", "mta7.am0.yahoodns.net", "yahoo"),
        ("small.example", "mx.small.example", None),
        ("notgoogle.com", None, None),  # suffixes match on label boundaries
        ("small.example", "evilgoogle.com", None),
    ],
)
def test_builtin_groups(domain: str, mx: str | None, group: str | None) -> None:
    assert DomainGroups().group_for(domain, mx) == group


def test_configured_groups_extend_and_override() -> None:
    config = parse_pacing(
        {
            "domain_groups": {
                "acme": {"domains": ["acme.example", "*.acme.example"], "mx": ["acme-mx.net"]},
                "gmail": {"mx": ["gmail-relay.corp.example"]},
                "outlook": {"domains": ["gmail.com"]},  # a later rule wins on a domain
            }
        }
    )
    groups = config.domain_groups
    assert groups.group_for("acme.example") == "acme"
    assert groups.group_for("eu.acme.example") == "acme"
    assert groups.group_for("other.example", "in1.acme-mx.net") == "acme"
    assert groups.group_for("corp.example", "gmail-relay.corp.example") == "gmail"
    assert groups.group_for("gmail.com") == "outlook"
    assert groups.group_for("googlemail.com") == "gmail"
    # the domain decides before the MX
    assert groups.group_for("acme.example", "aspmx.l.google.com") == "acme"
    only_own = parse_pacing(
        {"builtin_domain_groups": False, "domain_groups": {"acme": {"domains": ["acme.example"]}}}
    )
    assert only_own.domain_groups.group_for("gmail.com") is None
    assert Pacer(only_own).group_for("x@acme.example") == "acme"


async def test_slots_are_first_come_first_served(autojump_clock: trio.testing.MockClock) -> None:
    slots = Slots(4)
    order: list[tuple[str, float]] = []
    await slots.acquire(3)

    async def take(name: str, n: int, delay: float) -> None:
        await trio.sleep(delay)
        async with slots.hold(n):
            order.append((name, trio.current_time()))
            await trio.sleep(1)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "big", 4, 0.1)  # must wait for the 3 held
        nursery.start_soon(take, "small", 1, 0.2)  # would fit now, but must not overtake
        await trio.sleep(0.5)
        assert order == []
        assert slots.waiting == 2
        slots.release(3)
    assert [(name, t - start) for name, t in order] == [("big", 0.5), ("small", 1.5)]
    assert slots.borrowed == 0


async def test_a_cancelled_waiter_lets_the_next_one_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = Slots(2)
    await slots.acquire(1)
    got: list[str] = []

    async def small() -> None:
        await trio.sleep(0.1)
        await slots.acquire(1)
        got.append("small")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(small)
        with trio.move_on_after(1):
            await slots.acquire(2)  # head of the queue, never fits while 1 is held
        await trio.sleep(0.1)
    assert got == ["small"]
    assert slots.borrowed == 2
    with pytest.raises(ValueError, match="cannot hold 3"):
        slots.try_acquire(3)


async def test_relay_connection_and_group_in_flight_caps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer(
        parse_pacing(
            {
                "relays": {"ses": {"max_connections": 2, "max_messages_per_connection": 50}},
                "groups": {"gmail": {"max_in_flight": 20}},
            }
        )
    )
    assert pacer.max_messages_per_connection("ses") == 50
    assert pacer.max_messages_per_connection("other") is None
    open_now = peak = 0

    async def session() -> None:
        nonlocal open_now, peak
        async with pacer.connection_slots("ses").hold():
            open_now += 1
            peak = max(peak, open_now)
            await trio.sleep(1)
            open_now -= 1

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(session)
    assert peak == 2
    assert trio.current_time() == pytest.approx(3.0)
    gmail = pacer.in_flight_slots(group="gmail")
    assert gmail is pacer.in_flight_slots(group="gmail")
    assert gmail.try_acquire(15)
    assert not gmail.try_acquire(10)
    assert pacer.in_flight_slots(group="yahoo").try_acquire(10_000)  # not capped


async def test_slots_take_what_is_free_and_wake_on_release(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The dispatcher's use: take up to n without waiting, else wait for a release."""
    slots = Slots(3)
    assert slots.take(2) == 2
    assert slots.take(5) == 1  # only what is free
    assert slots.take(1) == 0
    assert slots.free == 0
    woke: list[float] = []

    async def watch() -> None:
        await slots.wait_released()
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(2)
        assert woke == []
        slots.release(1)
    assert woke == [2.0]
    assert slots.free == 1
    assert slots.borrowed == 2
    await slots.acquire(1)  # a waiter in line: a newcomer's take gets nothing
    async with trio.open_nursery() as nursery:
        nursery.start_soon(slots.acquire, 2)
        await trio.sleep(0.1)
        slots.release(1)
        assert slots.free == 0
        assert slots.take(1) == 0
        slots.release(2)
    assert slots.borrowed == 2
    assert Slots(math.inf).take(10**6) == 10**6
