"""Hydra's launchers run the real app: the task function pickles by reference, every job of joblib, submitit_local
and (with a fake sbatch/srun/sacct) submitit_slurm completes, and the exit code says whose mistake a failure was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from conftest import NO_RECALL, QUICK, run_app
from moshi_knowledge.app import task

FIX_LINE = "fix: give it on the command line: story.path=..."
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # jobs side by side: one torch thread each, not two fighting per core


def _statuses(sweep_dir: Path) -> dict[str, str]:
    """Job number -> summary.json status, for every job directory of a sweep."""
    return {p.parent.name: json.loads(p.read_text())["status"] for p in sweep_dir.glob("*/summary.json")}


def _two_jobs(tiny_cache: Path, sweep_dir: Path) -> list[str]:
    """Two short training jobs on the session's cached stages."""
    return ["-m", *QUICK, NO_RECALL, "logger=none", "train.lr=1e-3,2e-3", f"paths.cache_dir={tiny_cache}",
            f"hydra.sweep.dir={sweep_dir}"]


def test_the_task_function_pickles_by_reference() -> None:
    """What a launcher sends to its workers is the module and name, not the function with its globals."""
    blob = cloudpickle.dumps(task)
    assert b"moshi_knowledge.app" in blob and len(blob) < 200
    assert cloudpickle.loads(blob) is task


# ---- every job of a sweep completes, whatever the launcher -----------------------------------------------------


@pytest.mark.slow
def test_joblib_runs_each_job_in_a_worker_process(tiny_cache: Path, tmp_path: Path) -> None:
    done = run_app([*_two_jobs(tiny_cache, tmp_path / "sweep"), "launcher=joblib", "hydra.launcher.n_jobs=2"],
                   cwd=tmp_path, env=ONE_THREAD, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert _statuses(tmp_path / "sweep") == {"0": "completed", "1": "completed"}


@pytest.mark.slow
def test_submitit_local_runs_each_job_in_a_subprocess(tiny_cache: Path, tmp_path: Path) -> None:
    done = run_app([*_two_jobs(tiny_cache, tmp_path / "sweep"), "launcher=submitit_local"], cwd=tmp_path,
                   env=ONE_THREAD, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert _statuses(tmp_path / "sweep") == {"0": "completed", "1": "completed"}
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_0_result.pkl"))) == 2


# A SLURM of three scripts: sbatch accepts the array and names it job 4242; srun drops its options and runs the
# command; sacct says a task completed once submitit has written its result. The test runs the sbatch script of
# each array task itself, with the variables SLURM sets, as a node would.
FAKE_SLURM = {
    "sbatch": 'echo "Submitted batch job 4242"\n',
    "srun": ('while [ "${1#-}" != "$1" ]; do case "$1" in --output|--error) shift 2;; *) shift;; esac; done\n'
             'exec "$@"\n'),
    "sacct": ('echo "JobID|State|NodeList"\n'
              'for i in 0 1; do\n'
              '  if [ -e "$FAKE_SUBMITIT/4242_$i/4242_${i}_0_result.pkl" ]; then s=COMPLETED; else s=RUNNING; fi\n'
              '  echo "4242_$i|$s|node0"\n'
              'done\n'),
}


def _wait_for(paths: list[Path], proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"not written: {[str(p) for p in paths if not p.exists()]}"
        time.sleep(0.5)


@pytest.mark.slow
def test_submitit_slurm_writes_the_array_script_and_its_pickled_jobs_run(tiny_cache: Path, tmp_path: Path) -> None:
    bin_dir, sweep = tmp_path / "bin", tmp_path / "sweep"
    bin_dir.mkdir()
    for name, body in FAKE_SLURM.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    folder = sweep / ".submitit"
    env = {**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1", "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "FAKE_SUBMITIT": str(folder)}
    args = [*_two_jobs(tiny_cache, sweep), "launcher=submitit_slurm", "hydra.launcher.partition=fake",
            "hydra.launcher.setup=[echo node-setup-ran]"]
    parent = subprocess.Popen([sys.executable, "-m", "moshi_knowledge", *args], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tasks: list[subprocess.Popen] = []
    try:
        script = folder / "4242" / "4242_submission.sh"
        _wait_for([script, *(folder / f"4242_{i}" / f"4242_{i}_submitted.pkl" for i in (0, 1))], parent, 60)
        text = script.read_text()
        for line in ("#SBATCH --array=0-1%2", "#SBATCH --job-name=moshi_knowledge", "#SBATCH --partition=fake",
                     "#SBATCH --gpus-per-node=1", "#SBATCH --signal=USR2@120", "#SBATCH --time=240",
                     "echo node-setup-ran", "export SUBMITIT_EXECUTOR=slurm"):
            assert line in text, text
        for i in (0, 1):
            slurm = {"SLURM_JOB_ID": f"{4243 + i}", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": str(i),
                     "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                     "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "node0"}
            tasks.append(subprocess.Popen(["bash", str(script)], cwd=tmp_path, env={**env, **slurm}, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        for proc in tasks:
            out = proc.communicate(timeout=240)[0]
            assert proc.returncode == 0 and "node-setup-ran" in out, out[-4000:]
        out = parent.communicate(timeout=120)[0]  # sacct now says completed: the launcher collects both results
        assert parent.returncode == 0, out[-4000:]
    finally:
        for proc in [parent, *tasks]:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert _statuses(sweep) == {"0": "completed", "1": "completed"}
    assert all("resume: true" in (sweep / job / ".hydra" / "config.yaml").read_text() for job in ("0", "1"))


# ---- exit codes: 2 for the user's mistake, 1 for a crash after Hydra accepted the command line ------------------


@pytest.mark.slow
def test_a_command_line_hydra_refuses_exits_2_and_a_launcher_crash_exits_1(tmp_path: Path) -> None:
    """Hydra exits 1 for both; the error it exits on tells them apart. A sweep value that fails for one job is
    refused too (Hydra composes each batch before launching it)."""
    for args, named in ((["lora.rnk=2"], "lora.rnk"), (["lora.rank=2,abc"], "lora.rank"),
                        (["lora=nosuch"], "lora/nosuch"), (["seed=0,(1"], "seed=0,(1")):
        refused = run_app(["-m", *args, "launcher=joblib", f"hydra.sweep.dir={tmp_path / 's'}"], cwd=tmp_path,
                          timeout=120)
        assert refused.returncode == 2 and named in refused.stderr, (args, refused.stderr[-3000:])
        assert not list(tmp_path.glob("s/*/.hydra"))  # no job started
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    for args in (["-m", "seed=0,1", "launcher=joblib", f"hydra.sweep.dir={blocker}"],
                 ["-m", "seed=0,1", f"hydra.sweep.dir={blocker}"],
                 [f"hydra.run.dir={blocker}"]):
        crashed = run_app([*args, "logger=none", f"paths.cache_dir={tmp_path / 'cache'}"], cwd=tmp_path,
                          timeout=120)
        assert crashed.returncode == 1 and "FileExistsError" in crashed.stderr, (args, crashed.stderr[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_user_error_in_a_job_exits_2_with_its_fix(launcher: str, tmp_path: Path) -> None:
    """A job's UserError exits 2 from the job's process; under joblib its SystemExit comes back to the launching
    process, which ends with the same code (no traceback either way)."""
    done = run_app(["-m", "story=file", "stages=[story]", "seed=0,1", "logger=none", f"launcher={launcher}",
                    f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                   cwd=tmp_path, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 2 and FIX_LINE in out and "Traceback" not in out, out[-4000:]


@pytest.mark.slow
def test_a_user_error_in_a_submitit_job_is_reported_with_its_fix(tmp_path: Path) -> None:
    """submitit keeps a job's exception, not its exit code: Hydra reports the job failed (exit 1), ending with the
    UserError's message and fix."""
    done = run_app(["-m", "story=file", "stages=[story]", "seed=0,1", "logger=none", "launcher=submitit_local",
                    f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                   cwd=tmp_path, timeout=300)
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-4000:]
    tail = done.stderr.strip().splitlines()[-2:]
    assert tail == ["moshi_knowledge.errors.UserError: story.path: no value (the chosen option needs one)",
                    f"  {FIX_LINE}"], done.stderr[-4000:]
