"""Which alert lines the console lists and what acknowledging one asks, on plain snapshot data
(the cluster tests show the same with real workers: tests/cluster/test_cluster_alerts.py)."""

from __future__ import annotations

from types import SimpleNamespace

from console.alert_lines import (
    acknowledgements,
    alert_lines,
    open_elsewhere,
    unacknowledged_in_cluster,
)
from engine.alerts import Alert
from engine.views import WorkerAlerts

NEAR = "quota_near:kim:api_calls"


def alert(alert_id: int, key: str, at: float, *, acknowledged: bool = False) -> Alert:
    rule = key.split(":")[0]
    return Alert(alert_id, key, rule, "warning", f"{key} #{alert_id}", "kim", at, at + 1,
                 acknowledged=acknowledged)


def snapshot(
    here: tuple[Alert, ...], others: dict[str, tuple[Alert, ...]] | None,
    unpublished: int = 0,
):
    """A snapshot's alerts: this engine's, and (None: a single process) other workers', each
    of which holds `unpublished` unacknowledged alerts more than it published."""
    cluster = None if others is None else SimpleNamespace(
        worker_id="w1",
        alerts=tuple(
            WorkerAlerts(w, alerts, sum(not a.acknowledged for a in alerts) + unpublished)
            for w, alerts in others.items()
        ),
    )
    unacknowledged = sum(not a.acknowledged for a in here)
    return SimpleNamespace(
        monitor=SimpleNamespace(alerts=here, alerts_unacknowledged=unacknowledged),
        cluster=cluster,
    )


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


def test_the_clusters_unacknowledged_alerts_count_a_condition_raised_by_several_once():
    here = (alert(1, NEAR, 30.0), alert(2, "auth_burst:s", 5.0))
    others = {
        "w2": (alert(1, NEAR, 10.0), alert(2, "auth_burst:s", 6.0)),
        "w3": (alert(4, NEAR, 20.0, acknowledged=True),),
    }
    # kim's quota_near (open on w1 and w2: one line), each worker's auth burst, and the 5
    # unacknowledged alerts w2 and w3 each hold beyond those they published.
    assert unacknowledged_in_cluster(snapshot(here, others, unpublished=5)) == 3 + 10
    lines = alert_lines(snapshot(here, others))
    assert unacknowledged_in_cluster(snapshot(here, others)) == sum(
        not line.alert.acknowledged for line in lines
    )
    assert unacknowledged_in_cluster(snapshot(here, None)) is None
