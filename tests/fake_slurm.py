"""A fake SLURM for tests: `sbatch`, `srun`, `sacct`, `squeue`, `scancel`, `sinfo`, `scontrol`,
`sacctmgr` and `sshare` in one script, dispatched on the command name.

`install(bin_dir, state_dir)` writes one small shell wrapper per command into `bin_dir` (put it first
on PATH). Every call is appended to `<state_dir>/calls.jsonl` as {"cmd": name, "argv": [...]}.

- `sbatch` runs the job's `--wrap` command synchronously in its `-D` folder (stdout and stderr to
  `--output`, `%j` replaced by the job id), records the exit status and prints the id (`--parsable`).
  Running it synchronously keeps the test fast: the executor submits from two threads, and its first
  status query already finds the job finished.
- `srun` (the job step inside the job) drops its options and runs the command.
- `sacct` / `squeue` answer `<id>|<STATE>` lines for the jobs of `--name`, as the plugin parses them.
- `scontrol show config`, `sinfo -o %P`, `sacctmgr` / `sshare` (account checks) give plausible answers.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "squeue", "scancel", "sinfo", "scontrol", "sacctmgr", "sshare")
ACCOUNT = "fake_account"


def install(bin_dir: Path, state_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\nFAKE_SLURM_DIR='{state_dir}' exec '{sys.executable}' '{Path(__file__).resolve()}' "
                        f"{name} \"$@\"\n")
        shim.chmod(0o755)


def calls(state_dir: Path, cmd: str | None = None) -> list[list[str]]:
    path = state_dir / "calls.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r["argv"] for r in rows if cmd is None or r["cmd"] == cmd]


def option(argv: list[str], *names: str) -> str | None:
    """Value of an option given as `--name value`, `--name=value` or `-X value`."""
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a[len(n) + 1:]
    return None


def _record(state: Path, cmd: str, argv: list[str]) -> None:
    with open(state / "calls.jsonl", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps({"cmd": cmd, "argv": argv}) + "\n")


def _next_id(state: Path) -> int:
    with open(state / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = int(f.read().strip() or 1000) + 1
        f.seek(0)
        f.truncate()
        f.write(str(n))
    return n


def _jobs(state: Path, name: str | None) -> list[dict]:
    out = []
    for p in sorted((state / "jobs").glob("*.json")):
        job = json.loads(p.read_text())
        if name is None or job["name"] == name:
            out.append(job)
    return out


def sbatch(state: Path, argv: list[str]) -> int:
    wrap = option(argv, "--wrap")
    if wrap is None:
        print("sbatch: fake SLURM runs --wrap jobs only", file=sys.stderr)
        return 1
    jobid = _next_id(state)
    name = option(argv, "--job-name", "-J") or "sbatch"
    workdir = option(argv, "-D", "--chdir") or os.getcwd()
    log = Path((option(argv, "--output", "-o") or "slurm-%j.out").replace("%j", str(jobid)))
    (state / "jobs").mkdir(exist_ok=True)
    job = {"id": str(jobid), "name": name, "state": "RUNNING", "argv": argv}
    (state / "jobs" / f"{jobid}.json").write_text(json.dumps(job))
    env = dict(os.environ, SLURM_JOB_ID=str(jobid), SLURM_JOBID=str(jobid))
    gpus = option(argv, "--gpus")
    if gpus:
        env["SLURM_GPUS"] = gpus.split(":")[-1]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        rc = subprocess.run(["/bin/sh", "-c", wrap], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL).returncode
    job.update(state="COMPLETED" if rc == 0 else "FAILED", rc=rc)
    (state / "jobs" / f"{jobid}.json").write_text(json.dumps(job))
    print(jobid)
    return 0


def srun(argv: list[str]) -> int:
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        rest.pop(0)
    if not rest:
        print("srun: no command", file=sys.stderr)
        return 1
    return subprocess.run(rest).returncode


def status(state: Path, argv: list[str], fmt: str) -> int:
    name = option(argv, "--name")
    for job in _jobs(state, name):
        print(f"{job['id']}|{job['state']}")
    return 0


def main(argv: list[str]) -> int:
    cmd, args = argv[0], argv[1:]
    state = Path(os.environ["FAKE_SLURM_DIR"])
    _record(state, cmd, args)
    if cmd == "sbatch":
        return sbatch(state, args)
    if cmd == "srun":
        return srun(args)
    if cmd in ("sacct", "squeue"):
        if "-o" in args and any(a.startswith("Account") for a in args):  # account guess: `sacct -nu USER -o Account`
            print(ACCOUNT)
            return 0
        if any(a.startswith("--format=Reason") for a in args):
            print("None")
            return 0
        return status(state, args, cmd)
    if cmd == "scontrol":
        print("MaxArraySize            = 1001\nMinJobAge               = 300 sec")
        return 0
    if cmd == "sinfo":
        print("PARTITION\ncpu*\ngpu")
        return 0
    if cmd in ("sacctmgr", "sshare"):
        print(ACCOUNT)
        return 0
    if cmd == "scancel":
        return 0
    print(f"fake SLURM: unknown command {cmd}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
