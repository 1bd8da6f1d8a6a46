"""GPU assignment on a shared machine (pipeline/core/devices.py), with fake GPU lists: runs on CPU."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import pytest
from conftest import REPO

from pipeline import cli, launch
from pipeline.core import devices
from pipeline.core.errors import UserError

GPUS = ["GPU-aaaa", "GPU-bbbb"]


@pytest.fixture(autouse=True)
def _release_leases():
    yield
    for lease in list(devices._HELD):
        lease.release()


def test_each_job_gets_a_free_gpu_of_its_own(tmp_path):
    logs = []
    first = devices.assign_device("cuda", GPUS, tmp_path, log=logs.append)
    second = devices.assign_device("cuda", GPUS, tmp_path, log=logs.append)
    assert (first, second) == ("cuda:0", "cuda:1")
    assert "GPU-aaaa" in logs[0] and "cuda:0" in logs[0] and "GPU-bbbb" in logs[1]
    with pytest.raises(UserError, match="no 1 free GPU"):
        devices.assign_device("cuda", GPUS, tmp_path, wait=False)
    devices._HELD[0].release()  # the first job ends
    assert devices.assign_device("auto", GPUS, tmp_path) == "cuda:0"


def test_nothing_to_choose(tmp_path):
    assert devices.assign_device("cuda", ["GPU-only"], tmp_path) == "cuda:0"
    assert devices.assign_device("auto", [], tmp_path) == "cpu"
    assert devices.assign_device("cuda", [], tmp_path) == "cuda"  # the stage reports that CUDA is missing
    assert devices.assign_device("cuda:1", GPUS, tmp_path) == "cuda:1"
    assert devices.assign_device("cpu", GPUS, tmp_path) == "cpu"
    assert list(tmp_path.iterdir()) == []  # no lock taken


def test_torchrun_ranks_keep_their_device(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.assign_device("cuda", GPUS, tmp_path) == "cuda"
    assert devices._HELD == []


def test_lock_is_held_by_another_process_and_freed_when_it_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from pipeline.core import devices
        print(devices.assign_device("cuda", {GPUS!r}, {str(tmp_path)!r}, log=lambda m: None), flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "cuda:0"
        assert devices.assign_device("cuda", GPUS, tmp_path, log=lambda m: None) == "cuda:1"
        with pytest.raises(UserError):
            devices.acquire(1, GPUS[:1], tmp_path, wait=False)
    finally:
        holder.kill()
        holder.wait()
    assert devices.acquire(1, GPUS[:1], tmp_path, wait=False).indices == [0]  # no stale lock after kill -9


def test_launch_runs_torchrun_on_free_gpus_of_the_visible_list(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    gpus = ["GPU-3", "GPU-5", "GPU-7"]
    taken = devices.acquire(1, gpus[:1], tmp_path, wait=False)  # another job holds physical GPU 3
    seen = {}

    def fake_run(cmd, env):
        seen.update(cmd=cmd, visible=env["CUDA_VISIBLE_DEVICES"], held=[list(l.ids) for l in devices._HELD])
        return 0

    argv = ["--", "train", "--config", "c.yaml", "--experiment", "e", "--out", "m", "--device", "cuda"]
    assert launch.launch(2, argv, gpus=gpus, directory=tmp_path, run=fake_run) == 0
    assert seen["visible"] == "5,7"
    assert seen["cmd"][1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert seen["cmd"][6:] == ["pipeline.cli", *argv[1:]]
    assert ["GPU-5", "GPU-7"] in seen["held"]
    assert devices._HELD == [taken]  # released after the run
    with pytest.raises(UserError, match="only `train`"):
        launch.launch(2, ["evaluate", "--device", "cuda"], gpus=gpus, directory=tmp_path, run=fake_run)
    with pytest.raises(UserError, match="only 3 GPU"):
        launch.launch(4, argv, gpus=gpus, directory=tmp_path, run=fake_run)


def test_cli_assigns_the_device_before_the_command_runs(tmp_path, monkeypatch):
    seen = []
    fake = types.ModuleType("fake_stage")
    fake.configure_parser = lambda p: p.add_argument("--device", default=None)
    fake.main = lambda args: seen.append(args.device) or 0
    monkeypatch.setitem(sys.modules, "fake_stage", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_stage", "a stage with --device"))
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(devices, "visible_gpus", lambda: list(GPUS))
    devices.acquire(1, GPUS[:1], tmp_path, wait=False)  # GPU 0 is busy
    assert cli.main(["fake", "--device", "cuda"]) == 0
    assert cli.main(["launch", "--gpus", "1", "--", "fake", "--device", "cpu"]) == 0
    monkeypatch.setattr(devices, "visible_gpus", lambda: [])
    assert cli.main(["fake", "--device", "auto"]) == 0
    assert seen == ["cuda:1", "cpu", "cpu"]


def test_launch_trains_with_ddp_through_torchrun(tmp_path):
    """`lmmvqa launch --gpus 2 -- train` for real: torchrun starts two ranks (gloo on CPU here, the
    GPU list faked) that train in step and save one model."""
    import json
    import os
    import re

    from test_train import make_workspace

    work = tmp_path / "work"
    work.mkdir()
    cfg = make_workspace(work, training={"batch_size": 4, "val_fraction": 0.2, "epochs": 1})
    (work / "cfg.yaml").write_text(json.dumps(cfg))
    outputs = []

    def run(cmd, env):
        proc = subprocess.run(cmd, cwd=work, env=dict(env, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)),
                              capture_output=True, text=True, timeout=300)
        outputs.append(proc.stdout + proc.stderr)
        return proc.returncode

    argv = ["--", "train", "--config", "cfg.yaml", "--experiment", "exp", "--out", "results/models/ddp",
            "--max-steps", "2", "--no-progress", "--device", "cpu"]
    visible_before = os.environ.get("CUDA_VISIBLE_DEVICES")
    rc = launch.launch(2, argv, gpus=GPUS, directory=tmp_path / "locks", run=run)
    assert rc == 0, outputs[-1][-3000:]
    digests = dict(re.findall(r"rank (\d)/2: step 2, final weights sha1 ([0-9a-f]{16})", outputs[-1]))
    assert set(digests) == {"0", "1"} and digests["0"] == digests["1"], digests
    assert (work / "results/models/ddp/lmmvqa.json").exists()
    assert devices._HELD == [] and os.environ.get("CUDA_VISIBLE_DEVICES") == visible_before  # the child's only


def test_resolve_device_is_the_one_resolution(monkeypatch):
    """auto -> cuda when CUDA is available, else cpu; cuda without CUDA is a UserError; encoders,
    the model and training all use this one function."""
    import torch

    from pipeline.features.encoding import encoders
    from pipeline.model import lmm
    from pipeline.training import train

    assert encoders.resolve_device is devices.resolve_device
    assert lmm.resolve_device is devices.resolve_device and train.resolve_device is devices.resolve_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu") == devices.resolve_device(None)
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device(torch.device("cpu")) == torch.device("cpu")
    for name in ("cuda", "cuda:1", torch.device("cuda", 0)):
        with pytest.raises(UserError, match="CUDA is not available"):
            devices.resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)


def test_devices_module_imports_without_torch():
    """`lmmvqa` imports pipeline.core.devices before any stage: it must not pull in torch."""
    code = "import sys, pipeline.core.devices; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
