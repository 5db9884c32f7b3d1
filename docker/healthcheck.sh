#!/usr/bin/env bash
# The health check of one container of the Machine's image, by OPENADDR_ROLE (docker/docker-compose.yml sets it):
# exit status 0 when that component is healthy. Every check is local to the container.
set -euo pipefail

case "${OPENADDR_ROLE:-}" in
  api-server)
    # Answers only once the app is up and connected to the metadata database.
    exec curl --fail --silent --show-error --max-time 10 "http://localhost:8080/api/v2/version" -o /dev/null
    ;;
  scheduler)
    # The scheduler's own health server (AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK=True): 200 while it heartbeats.
    exec curl --fail --silent --show-error --max-time 10 "http://localhost:8974/health" -o /dev/null
    ;;
  dag-processor)
    exec airflow jobs check --job-type DagProcessorJob --local
    ;;
  triggerer)
    exec airflow jobs check --job-type TriggererJob --local
    ;;
  worker)
    # The worker's own node (Celery's default name, celery@<hostname>) answers a ping over the broker.
    exec celery --app airflow.providers.celery.executors.celery_executor.app inspect ping \
      --destination "celery@${HOSTNAME}" --timeout 10
    ;;
  flower)
    exec curl --fail --silent --show-error --max-time 10 "http://localhost:5555/healthcheck" -o /dev/null
    ;;
  webhook)
    exec curl --fail --silent --show-error --max-time 10 "http://localhost:8000/health" -o /dev/null
    ;;
  init)
    exit 0
    ;;
  *)
    echo "healthcheck: OPENADDR_ROLE is '${OPENADDR_ROLE:-}', not one of api-server, scheduler, dag-processor," \
      "triggerer, worker, flower, webhook, init" >&2
    exit 1
    ;;
esac
