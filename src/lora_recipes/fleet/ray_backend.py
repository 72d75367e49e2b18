"""The Ray backend: each job a Ray task running `job.run_job`, the same function the local
backend runs in a thread, so the task launches the same child processes.

A task asks for one GPU when the cluster has any (Ray pins it with CUDA_VISIBLE_DEVICES), else
`--cpus-per-job` CPUs (default 1), and its children get that many OMP threads. It connects to
--ray-address, else $RAY_ADDRESS, else starts a local Ray instance with this machine's CPUs and
GPUs (and stops it at the end).

Ray's `max_retries` re-runs a task whose worker or node died; the task reads the run directory and
resumes from the newest checkpoint, never restarts a finished run, and a second `train` into a run
directory whose lock is still held (by a process on a node that only lost contact) is refused and
reported as busy. Run directories must be on storage every node sees at the same path: a relative
--runs is refused on a cluster of more than one node.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lora_recipes.errors import RuntimeFailure, UserError
from lora_recipes.fleet.job import FAILED, INTERRUPTED, JobResult, JobSpec, run_job

UNLIMITED = 1_000_000  # without --parallel, Ray's resources decide how many tasks run at once


# Ray puts Unix sockets under <temp>/ray/session_<time>_<pid>/sockets/, and a socket path may not
# exceed 107 bytes: a long $TMPDIR (a pytest tmp_path, a CI workspace) makes ray.init fail.
_SOCKET_PATH_ROOM = 40


def _local_temp_dir() -> str | None:
    """Where a local Ray instance keeps its session: Ray's default unless $RAY_TMPDIR says otherwise or
    the default would be too long for its sockets, then /tmp/ray."""
    if os.environ.get("RAY_TMPDIR"):
        return None  # Ray reads it itself
    default = os.path.join(tempfile.gettempdir(), "ray")
    return None if len(default) <= _SOCKET_PATH_ROOM else "/tmp/ray"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RayBackend:
    name = "ray"

    def __init__(
        self,
        *,
        address: str | None,
        parallel: int | None,
        cpus_per_job: int | None,
        max_retries: int,
        runs_relative: bool,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--backend ray needs Ray: pip install 'lora-recipes[ray]'") from None
        self.ray = ray
        address = address or os.environ.get("RAY_ADDRESS") or None
        self.started_here = False
        if not ray.is_initialized():
            if address:
                try:
                    ray.init(address=address, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise UserError(f"--ray-address {address}: cannot connect ({_first_line(exc)})") from None
            else:
                try:
                    ray.init(
                        num_cpus=os.cpu_count() or 1,
                        include_dashboard=False,
                        log_to_driver=False,
                        _temp_dir=_local_temp_dir(),
                    )
                except (OSError, RuntimeError, ValueError) as exc:
                    raise RuntimeFailure(f"cannot start a local Ray instance: {_first_line(exc)}") from None
                self.started_here = True
        self.nodes = len([n for n in ray.nodes() if n.get("Alive")])
        if self.nodes > 1 and runs_relative:
            self.close()
            raise UserError(
                f"--runs must be an absolute path on a Ray cluster of {self.nodes} nodes: every node writes its runs "
                "there, so it must be storage that every node sees at the same path (NFS, a shared disk)"
            )
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self.cpus = int(resources.get("CPU", 0))
        self.threads = cpus_per_job or 1
        options: dict[str, Any] = {"max_retries": max_retries, "retry_exceptions": False, "num_cpus": self.threads}
        if self.gpus:
            options["num_gpus"] = 1
        self.task = ray.remote(run_job).options(**options)
        self.slots = parallel or UNLIMITED
        self.running: dict[Any, str] = {}

    def describe(self) -> str:
        where = "a local Ray instance" if self.started_here else f"the Ray cluster ({self.nodes} nodes)"
        each = "one GPU" if self.gpus else f"{self.threads} CPU{'s' if self.threads != 1 else ''}"
        return f"ray: {where} with {self.cpus} CPUs and {self.gpus} GPUs, {each} per job"

    def submit(self, spec: JobSpec) -> None:
        threads = os.environ.get("OMP_NUM_THREADS") or str(self.threads)
        env = (*spec.env, ("OMP_NUM_THREADS", threads), ("MKL_NUM_THREADS", threads))
        self.running[self.task.remote(replace(spec, env=env))] = spec.name

    def wait(self, timeout: float) -> list[JobResult]:
        if not self.running:
            time.sleep(timeout)
            return []
        ray = self.ray
        refs = list(self.running)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        results = []
        for ref in ready:
            name = self.running.pop(ref)
            try:
                results.append(ray.get(ref))
            except ray.exceptions.TaskCancelledError:
                results.append(JobResult(name, INTERRUPTED, False, "stopped; it continues from its checkpoint"))
            except ray.exceptions.RayError as exc:  # the worker or its node died past max_retries
                results.append(JobResult(name, FAILED, True, f"ray: {_first_line(exc)}", retry=True))
        return results

    def active(self) -> int:
        return len(self.running)

    def stop(self) -> None:
        """Cancel every task: queued ones do not start, running ones get KeyboardInterrupt, which
        the job passes on to its child (a checkpoint, then exit 130)."""
        for ref in list(self.running):
            self.ray.cancel(ref, force=False)

    def close(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()


def runs_path_is_relative(runs: Path) -> bool:
    return not runs.expanduser().is_absolute()
