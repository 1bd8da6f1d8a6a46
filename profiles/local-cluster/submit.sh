#!/usr/bin/env bash
# Start a Snakemake job script in the background and print a job id (a blocking submit would run
# jobs one by one). The exit status lands in <jobdir>/<id>.rc for status.sh.
set -euo pipefail
jobscript="${@: -1}"
jobdir=.snakemake/local-cluster
mkdir -p "$jobdir"
id="$(date +%s%N)-$$"
nohup bash -c "bash '$jobscript'; echo \$? > '$jobdir/$id.rc'" > "$jobdir/$id.log" 2>&1 &
echo "$!" > "$jobdir/$id.pid"
echo "$id"
