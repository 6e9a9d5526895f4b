"""AlertManager: dedup by key, cooldown after acknowledge or resolve, bounded history."""

from __future__ import annotations

from engine.alerts import Alert, AlertManager
from engine.clock import ManualClock


def manager(**overrides) -> tuple[ManualClock, AlertManager]:
    clock = ManualClock()
    return clock, AlertManager(clock, **overrides)


def test_same_key_fires_into_one_alert_with_a_count():
    clock, alerts = manager()
    first = alerts.fire("pool_wait:assistant", "pool_wait", "warning", "waited 3s", "assistant")
    clock.advance(5)
    again = alerts.fire("pool_wait:assistant", "pool_wait", "warning", "waited 4s", "assistant")
    assert first is not None and again is not None
    (only,) = alerts.alerts()
    assert only.alert_id == first.alert_id and only.count == 2
    assert only.first_at == first.first_at and only.last_at == first.first_at + 5
    assert only.message == "waited 4s"  # the latest reading
    assert alerts.unacknowledged == 1


def test_acknowledged_key_stays_quiet_until_the_cooldown_passes():
    clock, alerts = manager(cooldown_s=60)
    first = alerts.fire("k", "rule", "critical", "m")
    assert first is not None and alerts.acknowledge(first.alert_id)
    clock.advance(59)
    assert alerts.fire("k", "rule", "critical", "m") is None
    assert len(alerts.alerts()) == 1 and alerts.suppressed == 1
    clock.advance(1)
    second = alerts.fire("k", "rule", "critical", "m")
    assert second is not None and second.alert_id != first.alert_id and second.count == 1
    assert [a.acknowledged for a in alerts.alerts()] == [False, True]  # newest first


def test_resolved_key_also_cools_down():
    clock, alerts = manager(cooldown_s=30)
    alerts.fire("k", "rule", "warning", "m")
    assert alerts.resolve("k") and not alerts.resolve("k")
    (resolved,) = alerts.alerts()
    assert resolved.resolved_at == clock.now() and not resolved.acknowledged
    assert alerts.fire("k", "rule", "warning", "m") is None
    clock.advance(30)
    assert alerts.fire("k", "rule", "warning", "m") is not None


def test_history_is_bounded_and_drops_are_counted():
    _, alerts = manager(max_alerts=10)
    for i in range(50):
        alerts.fire(f"key:{i}", "rule", "info", f"alert {i}")
    kept = alerts.alerts()
    assert len(kept) == 10 and alerts.dropped == 40
    assert [a.message for a in kept] == [f"alert {i}" for i in range(49, 39, -1)]
    assert alerts.unacknowledged == 10
    # A dropped alert's key is free again: it comes back as a new alert.
    assert alerts.fire("key:0", "rule", "info", "back") is not None
    assert alerts.dropped == 41


def test_acknowledge_and_acknowledge_all_by_severity():
    _, alerts = manager()
    ids = {
        sev: alerts.fire(f"k:{sev}:{i}", "rule", sev, "m").alert_id
        for i, sev in enumerate(("info", "warning", "critical", "critical"))
    }
    assert not alerts.acknowledge(999)
    assert alerts.acknowledge(ids["info"]) and not alerts.acknowledge(ids["info"])
    assert alerts.acknowledge_all("critical") == 2
    assert [a.severity for a in alerts.alerts(include_acknowledged=False)] == ["warning"]
    assert alerts.acknowledge_all() == 1 and alerts.acknowledge_all() == 0
    assert alerts.unacknowledged == 0 and len(alerts.alerts()) == 4


def test_cooldowns_are_forgotten_once_spent():
    clock, alerts = manager(cooldown_s=10)
    for i in range(100):
        alerts.resolve(alerts.fire(f"k{i}", "rule", "info", "m").key)
    assert alerts.cooling == 100
    clock.advance(10)
    alerts.prune()
    assert alerts.cooling == 0


def test_every_change_reaches_the_listener():
    seen: list[Alert] = []
    clock = ManualClock()
    alerts = AlertManager(clock, on_change=seen.append)
    first = alerts.fire("k", "rule", "warning", "m")
    alerts.fire("k", "rule", "warning", "m")
    alerts.acknowledge(first.alert_id)
    assert [(a.count, a.acknowledged) for a in seen] == [(1, False), (2, False), (2, True)]


def test_has_open_follows_every_way_an_alert_closes():
    clock, alerts = manager(max_alerts=2)
    a = alerts.fire("quota_near:u:tokens", "quota_near", "warning", "m")
    alerts.fire("quota_near:v:tokens", "quota_near", "warning", "m")
    assert a is not None and alerts.has_open("quota_near") and not alerts.has_open("latency")
    alerts.resolve("quota_near:v:tokens")
    assert alerts.has_open("quota_near")  # one of the two is still open
    assert alerts.acknowledge(a.alert_id) and not alerts.has_open("quota_near")
    clock.advance(61)
    alerts.fire("latency:global", "latency", "warning", "m")
    alerts.fire("pool_wait:x", "pool_wait", "warning", "m")
    alerts.fire("pool_wait:y", "pool_wait", "warning", "m")  # drops the latency alert
    assert not alerts.has_open("latency") and alerts.has_open("pool_wait")
