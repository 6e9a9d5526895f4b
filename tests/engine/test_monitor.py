"""Monitor: counters, session health with reasons, alert rules, bounded memory."""

from __future__ import annotations

import pytest

from engine.alerts import AlertRules, AuthBurstRule, ErrorRateRule, LatencyRule
from engine.clock import ManualClock
from engine.errors import LLMError, QuotaExceeded, RateLimited
from engine.monitor import Monitor

LLM_DOWN = LLMError("backend down")
RATE_LIMITED = RateLimited("session", 1.0)
QUOTA_EXCEEDED = QuotaExceeded("tokens", 100, 5.0)


def monitor(**overrides) -> tuple[ManualClock, Monitor]:
    clock = ManualClock()
    return clock, Monitor(clock, **overrides)


def started(**overrides) -> tuple[ManualClock, Monitor]:
    clock, mon = monitor(**overrides)
    mon.session_started("s1", "alice")
    return clock, mon


def alerts_of(mon: Monitor, rule: str):
    return [a for a in mon.alerts() if a.rule == rule]


# -- counters and views --------------------------------------------------------------------------
def test_turns_errors_and_tokens_are_counted_per_session_user_and_globally():
    clock, mon = started()
    mon.record_turn("s1", "alice", 0.2, 100, 20)
    clock.advance(1)
    mon.record_turn("s1", "alice", 0.4, 150, 30)
    mon.record_error("s1", "alice", LLM_DOWN, 1.5)
    mon.record_error("s1", "alice", RATE_LIMITED, None)
    view = mon.session_view("s1")
    assert (view.turns, view.errors, view.prompt_tokens, view.completion_tokens) == (2, 2, 250, 50)
    assert view.last_error == "RateLimited" and view.last_turn_at == clock.now()
    assert view.latency.count == 3 and view.latency.p99 == pytest.approx(1.5)
    user = mon.user_view("alice")
    assert (user.sessions, user.turns, user.errors, user.prompt_tokens) == (1, 2, 2, 250)
    snap = mon.snapshot()
    assert (snap.turns, snap.errors, snap.failures) == (2, 2, 1)  # RateLimited is a rejection
    assert snap.errors_by_type == (("LLMError", 1), ("RateLimited", 1))
    assert (snap.prompt_tokens, snap.completion_tokens) == (250, 50)
    assert snap.latency_total.count == 3 and snap.latency.count == 3
    assert len(snap.turns_per_s) == 300 and snap.turns_per_s[-2:] == (1, 1)
    assert snap.tokens_per_s[-2:] == (120, 180) and snap.errors_per_s[-1] == 2
    assert snap.sessions == 1 and snap.users == 1


def test_rates_are_per_second_over_recent_completed_seconds():
    clock, mon = started()
    for _ in range(10):
        for _ in range(5):
            mon.record_turn("s1", "alice", 0.1, 10, 10)
        clock.advance(1)
    snap = mon.snapshot()
    assert snap.turns_rate == 5.0 and snap.tokens_rate == 100.0 and snap.errors_rate == 0.0


def test_records_for_an_unknown_session_count_globally_but_keep_no_session_state():
    _, mon = monitor()
    mon.record_turn("ghost", "alice", 0.1, 1, 1)
    mon.record_error("ghost", "alice", LLM_DOWN, None)
    assert mon.session_view("ghost") is None and mon.health("ghost") is None
    snap = mon.snapshot()
    assert (snap.turns, snap.errors, snap.sessions) == (1, 1, 0)
    assert mon.user_view("alice").turns == 1


def test_session_view_is_cached_until_the_session_records_something():
    _, mon = started()
    mon.record_turn("s1", "alice", 0.1, 1, 1)
    first = mon.session_view("s1")
    assert mon.session_view("s1") is first
    mon.record_turn("s1", "alice", 0.1, 1, 1)
    assert mon.session_view("s1").turns == 2


# -- health --------------------------------------------------------------------------------------
def test_consecutive_errors_lower_health_with_reasons_and_successes_restore_it():
    _, mon = started()
    assert mon.health("s1").score == 100 and mon.health("s1").reasons == ()
    for _ in range(3):
        mon.record_error("s1", "alice", LLM_DOWN, None)
    health = mon.health("s1")
    assert health.score < 50
    assert "3 consecutive errors" in health.reasons
    assert "error rate 100% over last 3 turns" in health.reasons
    view = mon.session_view("s1")
    assert (view.health, view.health_reasons) == (health.score, health.reasons)
    mon.record_turn("s1", "alice", 0.1, 1, 1)
    better = mon.health("s1")
    assert better.score > health.score
    assert not any("consecutive" in r for r in better.reasons)
    assert "error rate 75% over last 4 turns" in better.reasons
    for _ in range(9):
        mon.record_turn("s1", "alice", 0.1, 1, 1)
    assert mon.health("s1").score == 100 and mon.health("s1").reasons == ()


def test_rejections_do_not_count_as_failures_in_health():
    _, mon = started()
    for _ in range(5):
        mon.record_error("s1", "alice", QUOTA_EXCEEDED, None)
    assert mon.health("s1").score == 100


def test_slow_turns_give_a_latency_reason():
    _, mon = started()
    for _ in range(10):
        mon.record_turn("s1", "alice", 4.2, 1, 1)
    health = mon.health("s1")
    assert "p95 latency 4.2s above 2s" in health.reasons and health.score == 75


def test_user_quota_shows_in_every_session_of_the_user():
    _, mon = started()
    mon.session_started("s2", "alice")
    assert mon.health("s2").score == 100
    mon.observe_quota("alice", "tokens", 92.0)
    assert mon.health("s1").reasons == ("user near quota: tokens 92%",)
    assert mon.health("s2").score == 90
    mon.observe_quota("alice", "tokens", 100.0)
    assert mon.health("s2").reasons == ("user over quota: tokens 100%",)
    mon.observe_quota("alice", "tokens", 10.0)
    assert mon.health("s1").score == 100


def test_rate_limited_reason_ages_out_without_new_records():
    clock, mon = started()
    for _ in range(5):
        mon.record_error("s1", "alice", RATE_LIMITED, None)
        clock.advance(1)
    assert "rate limited 5 times in last 60s" in mon.health("s1").reasons
    clock.advance(56)  # now 61 s after the first: the first two fall out of the minute
    assert "rate limited 3 times in last 60s" in mon.health("s1").reasons
    clock.advance(1)
    assert mon.health("s1").reasons == ()


def test_health_is_cached_while_nothing_changes():
    _, mon = started()
    mon.record_error("s1", "alice", LLM_DOWN, None)
    assert mon.health("s1") is mon.health("s1")


# -- alert rules ---------------------------------------------------------------------------------
def test_global_error_rate_fires_critical_on_tick_and_resolves():
    clock, mon = started(alert_rules=AlertRules(error_rate=ErrorRateRule(20.0, 60, 20)))
    for _ in range(10):
        mon.record_error("s1", "alice", LLM_DOWN, None)
    mon.tick()
    assert alerts_of(mon, "error_rate") == []  # 10 samples: below the minimum
    for _ in range(20):
        mon.record_turn("s1", "alice", 0.1, 1, 1)
    mon.tick()
    (alert,) = alerts_of(mon, "error_rate")
    assert alert.severity == "critical" and alert.key == "error_rate:global"
    assert alert.message == "error rate 33% over last 60s (10 of 30 turns failed)"
    mon.tick()
    assert alerts_of(mon, "error_rate")[0].count == 2
    clock.advance(61)
    mon.tick()  # the window no longer holds the failures
    assert alerts_of(mon, "error_rate")[0].resolved_at == clock.now()


def test_rejections_do_not_raise_the_error_rate_alert():
    _, mon = started()
    for _ in range(100):
        mon.record_error("s1", "alice", RATE_LIMITED, None)
    mon.tick()
    assert alerts_of(mon, "error_rate") == []


def test_p95_latency_over_the_window_fires_warning():
    _, mon = started(alert_rules=AlertRules(latency=LatencyRule(p95_s=2.0, min_samples=20)))
    for _ in range(30):
        mon.record_turn("s1", "alice", 3.0, 1, 1)
    mon.tick()
    (alert,) = alerts_of(mon, "latency")
    assert alert.severity == "warning" and "p95 latency 3.0s" in alert.message


def test_quota_near_warns_and_exceeded_is_critical():
    _, mon = monitor()
    mon.observe_quota("alice", "tokens", 79.0)
    assert mon.alerts() == ()
    mon.observe_quota("alice", "tokens", 85.0)
    mon.observe_quota("alice", "tokens", 92.0)
    (near,) = mon.alerts()
    assert (near.rule, near.severity, near.key, near.subject) == (
        "quota_near",
        "warning",
        "quota_near:alice:tokens",
        "alice",
    )
    assert near.count == 2 and "92%" in near.message
    mon.observe_quota("alice", "tokens", 100.0)
    exceeded = alerts_of(mon, "quota_exceeded")[0]
    assert exceeded.severity == "critical" and exceeded.key == "quota_exceeded:alice:tokens"
    mon.observe_quota("alice", "tokens", 40.0)  # the window slid: both clear
    assert all(a.resolved_at is not None for a in mon.alerts())


def test_pool_timeouts_and_long_waits_fire_per_agent_type():
    _, mon = monitor()
    mon.record_pool_wait("assistant", 0.5, timed_out=False)
    assert mon.alerts() == ()
    mon.record_pool_wait("assistant", 5.0, timed_out=True)
    assert "timed out after 5.00s" in mon.alerts()[0].message
    mon.record_pool_wait("assistant", 3.0, timed_out=False)
    mon.record_pool_wait("research", 2.5, timed_out=False)
    by_key = {a.key: a for a in mon.alerts()}
    assert by_key["pool_wait:assistant"].count == 2
    assert by_key["pool_wait:assistant"].severity == "warning"
    assert by_key["pool_wait:assistant"].message.endswith("waited 3.00s (threshold 2s)")
    assert by_key["pool_wait:research"].subject == "research"
    pools = {p.agent_type: p for p in mon.snapshot().pools}
    assert (pools["assistant"].waits, pools["assistant"].timeouts) == (3, 1)


def test_auth_failure_bursts_per_presented_id_and_globally_are_critical():
    rules = AlertRules(auth_burst=AuthBurstRule(per_id=5, global_count=8, window_s=60))
    clock, mon = started(alert_rules=rules)
    for _ in range(4):
        mon.record_auth_failure("s1")
        clock.advance(10)
    assert mon.alerts() == ()
    mon.record_auth_failure("s1")  # 5 within 40 s
    (alert,) = mon.alerts()
    assert (alert.key, alert.severity, alert.subject) == ("auth_burst:s1", "critical", "s1")
    assert mon.user_view("alice").auth_failures == 5
    for _ in range(3):
        mon.record_auth_failure(None)
    assert {a.key for a in mon.alerts()} == {"auth_burst:s1", "auth_burst:global"}
    assert mon.snapshot().auth_failures == 8


def test_slow_auth_failures_are_not_a_burst():
    clock, mon = monitor()
    for _ in range(50):
        mon.record_auth_failure("guess")
        clock.advance(15)  # 4 per minute
    assert mon.alerts() == ()


def test_auth_tracking_of_attacker_chosen_ids_is_bounded():
    _, mon = monitor()
    for i in range(5000):  # each fails once: only noted in a fixed number of slots
        mon.record_auth_failure(f"random-{i}" + "x" * 500)
    assert len(mon._auth_ids) == 0
    for i in range(5000):  # each fails twice: tracked, the longest tracked dropped first
        for _ in range(2):
            mon.auth_failure_log.append(f"twice-{i}" + "x" * 500)
        mon.count_auth_failures()
    assert len(mon._auth_ids) == 1024
    assert all(len(key) <= 64 for key in mon._auth_ids)
    assert mon.snapshot().auth_failures == 15_000


def test_logged_auth_failures_count_in_batches_on_tick_and_on_every_read():
    rules = AlertRules(auth_burst=AuthBurstRule(per_id=5, global_count=8, window_s=60))
    _, mon = started(alert_rules=rules)
    for _ in range(5):
        mon.auth_failure_log.append("s1")
    assert mon.user_view("alice").auth_failures == 5  # counted when read
    assert [a.key for a in mon.alerts()] == ["auth_burst:s1"]
    for _ in range(3):
        mon.auth_failure_log.append(None)
    mon.tick()  # counted by the tick
    assert mon.auth_failure_log == []
    assert {a.key for a in alerts_of(mon, "auth_burst")} == {"auth_burst:s1", "auth_burst:global"}
    mon.auth_failure_log.append("s1")
    mon.session_ended("s1")  # counted while its user can still be found
    assert mon.user_view("alice").auth_failures == 6
    assert mon.snapshot().auth_failures == 9


def test_alerts_dedup_cooldown_and_acknowledge_through_the_monitor():
    clock, mon = monitor(cooldown_s=60)
    mon.record_pool_wait("assistant", 9.0, timed_out=True)
    mon.record_pool_wait("assistant", 9.0, timed_out=True)
    (alert,) = mon.alerts()
    assert alert.count == 2
    assert mon.acknowledge(alert.alert_id)
    assert mon.alerts(include_acknowledged=False) == ()
    mon.record_pool_wait("assistant", 9.0, timed_out=True)
    assert len(mon.alerts()) == 1
    clock.advance(60)
    mon.record_pool_wait("assistant", 9.0, timed_out=True)
    assert len(mon.alerts()) == 2 and mon.snapshot().alerts_unacknowledged == 1
    assert mon.acknowledge_all("warning") == 1


def test_alert_history_through_the_monitor_is_bounded():
    _, mon = monitor(max_alerts=10)
    for i in range(50):
        mon.observe_quota(f"user{i}", "tokens", 95.0)
    snap = mon.snapshot()
    assert len(snap.alerts) == 10 and snap.alerts_dropped == 40
    assert snap.alerts[0].subject == "user49"


# -- bounded memory ------------------------------------------------------------------------------
def test_ended_sessions_and_idle_users_leave_nothing_behind():
    clock, mon = monitor(user_retention_s=300)
    for i in range(10_000):
        sid, uid = f"s{i}", f"u{i % 2500}"
        mon.session_started(sid, uid)
        mon.record_turn(sid, uid, 0.1, 5, 5)
        mon.record_error(sid, uid, RATE_LIMITED, None)
        mon.health(sid)
        mon.session_ended(sid)
    assert len(mon._sessions) == 0
    assert mon.snapshot().turns == 10_000
    clock.advance(299)
    mon.tick()
    assert len(mon._users) == 2500  # recently active
    clock.advance(1)
    mon.tick()
    assert len(mon._users) == 0 and len(mon._user_reap) == 0
    mon.tick()
    assert mon.alert_manager.cooling == 0


def test_users_with_live_sessions_or_recent_activity_are_kept():
    clock, mon = monitor(user_retention_s=100)
    mon.session_started("s1", "alice")
    mon.session_started("s2", "bob")
    mon.session_ended("s2")
    clock.advance(50)
    mon.observe_quota("bob", "tokens", 10.0)  # activity after the last session ended
    clock.advance(60)
    mon.tick()
    assert mon.user_view("bob") is not None and mon.user_view("alice") is not None
    clock.advance(50)
    mon.tick()
    assert mon.user_view("bob") is None
    clock.advance(10_000)
    mon.tick()
    assert mon.user_view("alice").sessions == 1
    mon.session_ended("s1")
    clock.advance(100)
    mon.tick()
    assert mon.user_view("alice") is None
