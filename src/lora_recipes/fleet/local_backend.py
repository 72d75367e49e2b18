"""The local backend: jobs in a pool of threads on this machine, each thread waiting on its
job's child processes.

With GPUs, one job per visible GPU (CUDA_VISIBLE_DEVICES, else `nvidia-smi`), each child pinned to
its GPU with CUDA_VISIBLE_DEVICES; `--parallel N` above the GPU count shares GPUs, least-loaded
first. Without a GPU, one job at a time unless `--parallel N`, and each child gets
$OMP_NUM_THREADS = the CPUs divided among the jobs (unless it is set already, or --cpus-per-job).
"""

from __future__ import annotations

import os
import subprocess
import threading
from collections import Counter
from concurrent import futures
from dataclasses import replace

from lora_recipes.fleet.job import FAILED, JobResult, JobSpec, run_job


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def thread_env(threads: int | None) -> tuple[tuple[str, str], ...]:
    """OMP/MKL thread counts for a child: the driver's own when set, else `threads`."""
    if threads is None:
        return ()
    value = os.environ.get("OMP_NUM_THREADS") or str(threads)
    return (("OMP_NUM_THREADS", value), ("MKL_NUM_THREADS", os.environ.get("MKL_NUM_THREADS") or value))


class LocalBackend:
    name = "local"

    def __init__(self, *, parallel: int | None, cpus_per_job: int | None, gpus: list[str] | None = None) -> None:
        self.gpus = visible_gpus() if gpus is None else gpus
        if self.gpus:
            self.slots = parallel or len(self.gpus)
            self.threads = cpus_per_job
        else:
            self.slots = parallel or 1
            self.threads = cpus_per_job or max(1, (os.cpu_count() or 1) // self.slots)
        self.stop_event = threading.Event()
        self.pool = futures.ThreadPoolExecutor(self.slots, thread_name_prefix="fleet-job")
        self.running: dict[futures.Future[JobResult], tuple[str, str | None]] = {}
        self.load: Counter[str] = Counter({g: 0 for g in self.gpus})

    def describe(self) -> str:
        if self.gpus:
            share = "one job each" if self.slots <= len(self.gpus) else f"{self.slots} jobs shared among them"
            return f"local: {len(self.gpus)} GPU{'s' if len(self.gpus) != 1 else ''} ({', '.join(self.gpus)}), {share}"
        jobs = "one job at a time" if self.slots == 1 else f"{self.slots} jobs at a time"
        return f"local: CPU, {jobs}, {os.environ.get('OMP_NUM_THREADS') or self.threads} thread(s) each"

    def submit(self, spec: JobSpec) -> None:
        env = list(spec.env) + list(thread_env(self.threads))
        gpu = None
        if self.gpus:
            gpu = min(self.gpus, key=lambda g: self.load[g])
            self.load[gpu] += 1
            env.append(("CUDA_VISIBLE_DEVICES", gpu))
        job = replace(spec, env=tuple(env))
        self.running[self.pool.submit(run_job, job, self.stop_event)] = (spec.name, gpu)

    def wait(self, timeout: float) -> list[JobResult]:
        """Results of the jobs that ended within `timeout` seconds."""
        if not self.running:
            self.stop_event.wait(timeout)
            return []
        done, _ = futures.wait(list(self.running), timeout=timeout, return_when=futures.FIRST_COMPLETED)
        results = []
        for future in done:
            name, gpu = self.running.pop(future)
            if gpu is not None:
                self.load[gpu] -= 1
            try:
                results.append(future.result())
            except Exception as exc:  # a bug in the job itself: that job fails, the fleet goes on
                results.append(JobResult(name, FAILED, True, f"the fleet job crashed: {exc!r}", retry=True))
        return results

    def active(self) -> int:
        return len(self.running)

    def stop(self) -> None:
        """Ask every running child to stop (a checkpoint, then exit 130); nothing new starts."""
        self.stop_event.set()

    def close(self) -> None:
        self.stop_event.set()
        self.pool.shutdown(wait=True)
