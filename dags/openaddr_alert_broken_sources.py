"""
### OpenAddresses alerts: broken entries and stalled sets

Daily. Tells the maintainers (machine-ci.md §11) through the connections `openaddr_alerts_smtp` (e-mail, extra
`to`) and `openaddr_alerts_slack` (a Slack incoming webhook):

1. **alert_broken_entries**: every layer entry with no accepted success for more than **7 days**
   (openaddresses/machine#602), **once** per breakage: the `alerts` table records each one, keyed by the entry and
   its last success, so the next alert for that entry comes only after it has succeeded and broken again.
2. **alert_stalled_sets**: every scheduled set (`openaddr_batch`) not complete **24 hours** after it started
   (openaddresses/openaddresses#6104), once per set.

With neither connection, alerts are off: each alert is logged as a warning and recorded without a channel, and the
health page says so. Texts and rules: `openaddr/alerts.py`.

Owner: the OpenAddresses Machine maintainers.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from openaddr_airflow.alerts import FailedRunNotifier
from openaddr_airflow.operators import BATCH_QUEUE, DEFAULT_ARGS
from openaddr_airflow.tags import Tag


@task
def alert_broken_entries() -> dict:
    """Tell the maintainers, once each, of the entries without an accepted success for more than 7 days."""
    from openaddr.alerts import alert_broken_entries as alert
    from openaddr.db.runs import utcnow
    from openaddr_airflow import config
    from openaddr_airflow.alerts import NotifierSender

    with config.machine_engine() as engine:
        return alert(engine, NotifierSender(), base_url=config.base_url(), now=utcnow())


@task
def alert_stalled_sets() -> dict:
    """Tell the maintainers, once each, of the scheduled sets not complete 24 hours after their start."""
    from openaddr.alerts import alert_stalled_sets as alert
    from openaddr.db.runs import utcnow
    from openaddr_airflow import config
    from openaddr_airflow.alerts import NotifierSender

    with config.machine_engine() as engine:
        return alert(engine, NotifierSender(), base_url=config.base_url(), now=utcnow())


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=[Tag.KIND_MAINTENANCE, Tag.TIER_2],
    default_args={**DEFAULT_ARGS, "queue": BATCH_QUEUE},
    on_failure_callback=FailedRunNotifier(),
)
def openaddr_alert_broken_sources():
    """Alert on broken entries and stalled sets (see the module docstring)."""
    alert_broken_entries()
    alert_stalled_sets()


openaddr_alert_broken_sources()
