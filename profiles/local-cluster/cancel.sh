#!/usr/bin/env bash
# Cancel jobs started by submit.sh.
jobdir=.snakemake/local-cluster
for id in "$@"; do
  [ -f "$jobdir/$id.pid" ] && kill -- "$(cat "$jobdir/$id.pid")" 2>/dev/null || true
done
