#!/usr/bin/env bash
# Grafana (official image) on http://localhost:3000 with the Prometheus datasource and the yoso board
# provisioned: open it, no login or clicking needed (anonymous viewers; admin/admin to edit).
# Start prometheus/launch.sh first: `prometheus`, the datasource host, is mapped to the Docker host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec docker run --rm --name yoso-grafana \
  --publish 3000:3000 \
  --add-host prometheus:host-gateway \
  --volume "$here/provisioning:/etc/grafana/provisioning:ro" \
  --volume "$here/boards:/var/lib/grafana/dashboards:ro" \
  --env GF_AUTH_ANONYMOUS_ENABLED=true \
  --env GF_AUTH_ANONYMOUS_ORG_ROLE=Viewer \
  --env GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH=/var/lib/grafana/dashboards/example.json \
  grafana/grafana:12.1.0
