"""One runner per running job: a Ray actor that drives the core's training (``run_job``) and
streams its progress to the scheduler. Killing it (cancel) takes its Ray Train controller,
workers and placement group with it: they are owned by this actor."""

from __future__ import annotations

from typing import Any

import ray


@ray.remote(num_cpus=0, max_restarts=0)
class Runner:
    def run(self, spec: dict[str, Any], store_root: str, job_id: str, scheduler) -> dict[str, Any]:
        from ..errors import JobFailed
        from ..spec import validate_spec
        from ..storage import Store
        from ..worker.launch import run_job

        def on_progress(event: dict[str, Any]) -> None:
            if event.get("kind") == "done":  # the manifest travels in the return value
                return
            scheduler.report.remote(job_id, event)

        try:
            result = run_job(validate_spec(spec), Store.open(store_root), job_id=job_id, on_progress=on_progress)
        except JobFailed as e:
            return {"state": "FAILED", "reason": e.reason}
        except Exception as e:  # noqa: BLE001 - any failure ends this job only
            return {"state": "FAILED", "reason": f"{type(e).__name__}: {e}"}
        files = (result.manifest or {}).get("files", {})
        return {"state": "SUCCEEDED", "adapter_uri": result.adapter_uri, "metrics": result.metrics,
                "adapter_bytes": sum(f["size"] for f in files.values())}

    def ping(self) -> bool:
        return True
