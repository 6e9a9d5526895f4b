"""Which alert lines the console lists and what acknowledging one asks, on plain snapshot data
(the cluster tests show the same with real workers: tests/cluster/test_cluster_alerts.py)."""

from __future__ import annotations

from types import SimpleNamespace

from console.alert_lines import acknowledgements, alert_lines, open_elsewhere
from engine.alerts import Alert
from engine.views import WorkerAlerts

NEAR = "quota_near:kim:api_calls"


def alert(alert_id: int, key: str, at: float, *, acknowledged: bool = False) -> Alert:
    rule = key.split(":")[0]
    return Alert(alert_id, key, rule, "warning", f"{key} #{alert_id}", "kim", at, at + 1,
                 acknowledged=acknowledged)


def snapshot(here: tuple[Alert, ...], others: dict[str, tuple[Alert, ...]] | None):
    """A snapshot's alerts: this engine's, and (None: a single process) other workers'."""
    cluster = None if others is None else SimpleNamespace(
        worker_id="w1",
        alerts=tuple(WorkerAlerts(w, alerts, len(alerts)) for w, alerts in others.items()),
    )
    return SimpleNamespace(monitor=SimpleNamespace(alerts=here), cluster=cluster)


def test_a_quota_condition_is_one_line_the_newest_open_one_acknowledged_everywhere():
    lines = alert_lines(snapshot(
        (alert(1, NEAR, 30.0, acknowledged=True), alert(2, "auth_burst:s", 5.0)),
        {
            "w2": (alert(1, NEAR, 10.0), alert(2, "auth_burst:s", 6.0)),
            "w3": (alert(4, NEAR, 20.0),),
        },
    ))
    (near,) = [line for line in lines if line.alert.key == NEAR]
    assert (near.worker, near.alert.alert_id) == ("w3", 4)  # w1's newer one is acknowledged
    assert [(m.worker, m.alert.alert_id) for m in near.merged] == [("w2", 1)]
    assert acknowledgements(near) == {"w3": [4], "w2": [1]}
    assert open_elsewhere(lines, "warning") == {"w3": [4], "w2": [1, 2]}
    # Other rules are each worker's own condition: listed apart.
    assert [(line.worker, line.alert.alert_id) for line in lines if line.alert.rule != "quota_near"
            ] == [("w2", 2), ("w1", 2)]


def test_acknowledging_a_merged_line_held_here_acknowledges_here_and_elsewhere():
    lines = alert_lines(snapshot((alert(3, NEAR, 20.0),), {"w2": (alert(1, NEAR, 10.0),)}))
    (near,) = lines
    assert (near.worker, near.here) == ("w1", True)
    assert acknowledgements(near) == {None: [3], "w2": [1]}


def test_a_process_alone_lists_every_alert_as_raised():
    lines = alert_lines(snapshot((alert(2, NEAR, 20.0), alert(1, NEAR, 10.0, acknowledged=True)),
                                 None))
    assert [(line.alert.alert_id, line.merged) for line in lines] == [(2, ()), (1, ())]
    assert acknowledgements(lines[0]) == {None: [2]}
