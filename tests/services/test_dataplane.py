"""The data plane without gRPC: what happens when the broker is down."""

import pytest

from memscore.broker import make_app
from memscore.dataplane import ScoringPlane
from memscore.errors import Unavailable
from memscore.runtime import Runtime


def test_submit_with_the_broker_down_is_unavailable_and_leaves_no_job(make_settings, closed_port):
    settings = make_settings(broker_url=f"redis://127.0.0.1:{closed_port}/0")
    rt = Runtime.from_settings(settings)
    app = make_app(settings)
    app.conf.broker_connection_max_retries = 1
    app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
    rt._celery = app
    plane = ScoringPlane(rt)
    with pytest.raises(Unavailable, match="nothing was stored"):
        plane.submit("scoring", {"dataset": "mnist1d", "models": 4}, request_id="r1")
    assert rt.jobs.list()[0] == []
    assert rt.objects.list("jobs/") == []
