#!/usr/bin/env bash
# Report a job started by submit.sh: running, success or failed.
id="$1"
jobdir=.snakemake/local-cluster
if [ -f "$jobdir/$id.rc" ]; then
  [ "$(cat "$jobdir/$id.rc")" = "0" ] && echo success || echo failed
elif [ -f "$jobdir/$id.pid" ] && kill -0 "$(cat "$jobdir/$id.pid")" 2>/dev/null; then
  echo running
else
  echo failed
fi
