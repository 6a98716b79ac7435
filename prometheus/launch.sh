#!/usr/bin/env bash
# Prometheus (official image) on http://localhost:9090, scraping the yoso on this machine's port 8000
# (`make run`) every 15 s with yoso's alert rules. `yoso-server`, the target in conf_dir/prometheus.yml,
# is mapped to the Docker host; in compose it is the yoso service instead.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec docker run --rm --name yoso-prometheus \
  --publish 9090:9090 \
  --add-host yoso-server:host-gateway \
  --volume "$here/conf_dir:/etc/prometheus:ro" \
  prom/prometheus:v3.5.0 \
  --config.file=/etc/prometheus/prometheus.yml \
  --storage.tsdb.path=/prometheus
