"""The FastAPI app. Each route maps to one scheduler call; the key comes from
``Authorization: Bearer KEY`` and is handed to the scheduler, which maps it to a tenant.

Errors: no/unknown key 401, another tenant's spec or filter 403, a job not found (or another
tenant's: indistinguishable) 404, a bad body or spec 400 with the CLI's field-naming lines in
``problems``, a body over :data:`MAX_BODY_BYTES` 413, an adapter not ready 409."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from ..auth import AuthError, Forbidden
from ..errors import JobNotFound, LorafarmError, SchedulerUnavailable, SpecError

MAX_BODY_BYTES = 1 << 20  # a spec is a few KB; a body past this is refused unread (413)
LOG_POLL_S = 0.5
API_VERSION = "v1"


class Backend(Protocol):
    """What the app calls: the scheduler actor's methods (in-process), each taking ``key``."""

    def submit(self, spec: dict[str, Any], key: str | None = None) -> dict[str, Any]: ...
    def submit_checked(self, spec: dict[str, Any], key: str | None = None) -> dict[str, Any]: ...
    def status(self, job_id: str, key: str | None = None) -> dict[str, Any]: ...
    def list(self, tenant: str | None = None, state: str | None = None, key: str | None = None) -> list: ...
    def events(self, job_id: str, key: str | None = None) -> list: ...
    def logs(self, job_id: str, offset: int = 0, key: str | None = None) -> tuple[list[str], int, bool]: ...
    def cancel(self, job_id: str, key: str | None = None) -> dict[str, Any]: ...
    def tenants(self, key: str | None = None) -> list: ...
    def adapter(self, job_id: str, key: str | None = None) -> dict[str, Any]: ...
    def adapter_file(self, job_id: str, name: str, key: str | None = None) -> tuple[Iterator[bytes], int, str]: ...


class Problem(BaseModel):
    error: str = Field(description="One line: what is wrong — how to fix.")
    problems: list[str] = Field(default_factory=list, description="Every problem, one line each (400s).")


class LogChunk(BaseModel):
    lines: list[str]
    offset: int = Field(description="Pass as ?offset= to get only newer lines.")
    ended: bool = Field(description="The job is in a terminal state: no more lines will come.")


class AdapterFile(BaseModel):
    name: str
    size: int
    sha256: str = Field(description="Hex sha256 of the file; the download's X-Content-SHA256 header too.")
    url: str


class AdapterListing(BaseModel):
    job_id: str
    adapter_uri: str
    files: list[AdapterFile]
    manifest: dict[str, Any] = Field(description="The adapter's manifest.json, as published.")


ERRORS = {401: {"model": Problem, "description": "no key, or an unknown key"},
          403: {"model": Problem, "description": "the key's tenant may not do this"},
          404: {"model": Problem, "description": "no such job for this key's tenant"}}


def _key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _problem(status: int, e: Exception) -> JSONResponse:
    problems = e.problems if isinstance(e, SpecError) else [str(e)]
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": problems[0] if len(problems) == 1 else f"{len(problems)} problems",
                         "problems": problems}, status_code=status, headers=headers)


def status_of(e: Exception) -> int:
    for kind, code in ((AuthError, 401), (Forbidden, 403), (JobNotFound, 404), (SpecError, 400),
                       (SchedulerUnavailable, 503)):
        if isinstance(e, kind):
            return code
    return 409 if isinstance(e, LorafarmError) else 500


def create_app(backend: Backend) -> FastAPI:
    app = FastAPI(title="lorafarm", version=API_VERSION,
                  description="Queue LoRA fine-tuning jobs, follow them and download their adapters. Every "
                              "call but /healthz needs `Authorization: Bearer <API key>` when the tenants file "
                              "lists keys; a key sees only its tenant's jobs (an admin key sees all).")

    @app.exception_handler(LorafarmError)
    def lorafarm_error(_request: Request, e: LorafarmError) -> JSONResponse:
        return _problem(status_of(e), e)

    @app.exception_handler(RequestValidationError)
    def bad_request(_request: Request, e: RequestValidationError) -> JSONResponse:
        """A bad query parameter: 400, one line per parameter, like the CLI's field lines."""
        lines = [f"{'.'.join(str(p) for p in err['loc'] if p != 'query')}: {err['msg']}" for err in e.errors()]
        return _problem(400, SpecError(lines or ["request: malformed"]))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post(f"/{API_VERSION}/jobs", status_code=201, responses={
        **ERRORS, 400: {"model": Problem, "description": "a malformed body or a bad spec (every problem)"},
        413: {"model": Problem, "description": f"a body over {MAX_BODY_BYTES} bytes"}},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"type": "object", "description": "A job spec (`lorafarm schema`), as JSON."}}}}})
    async def create_job(request: Request) -> JSONResponse:
        """Queue a job from a spec (the JSON form of a spec file) after the CLI's preflight (data, base model,
        target modules, labels): 201 with the job's summary and ``notices`` (intervals capped to the run)."""
        body = await _read_limited(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            spec = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
            return _problem(400, SpecError([f"body: not valid JSON{where} — send the spec as one JSON object"]))
        if not isinstance(spec, dict):
            return _problem(400, SpecError([f"body: expected a JSON object (the spec), got {type(spec).__name__} — "
                                            "send the spec's fields as one object"]))
        from starlette.concurrency import run_in_threadpool

        summary = await run_in_threadpool(backend.submit_checked, spec, _key(request))  # with the preflight
        return JSONResponse(summary, status_code=201)

    @app.get(f"/{API_VERSION}/jobs", responses=ERRORS)
    def list_jobs(request: Request, tenant: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Jobs, oldest first: the key's tenant's only (an admin key: all, or ?tenant=)."""
        return backend.list(tenant, state, _key(request))

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}", responses=ERRORS)
    def get_job(request: Request, job_id: str) -> dict[str, Any]:
        """A job's summary: state, progress, metrics, adapter_uri, reason."""
        return backend.status(job_id, _key(request))

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}/events", responses=ERRORS)
    def job_events(request: Request, job_id: str) -> list[dict[str, Any]]:
        """Every state change and note of the job, oldest first."""
        return backend.events(job_id, _key(request))

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}/logs", response_model=None, responses={
        **ERRORS, 200: {"model": LogChunk, "description": "JSON (follow=false) or text/plain lines (follow=true)"}})
    def job_logs(request: Request, job_id: str, offset: int = 0, follow: bool = False):
        """The job's log from ``offset``; ``follow=true`` streams lines as text until the job ends."""
        key = _key(request)
        lines, end, ended = backend.logs(job_id, max(0, offset), key)  # refusals answer before any byte
        if not follow:
            return {"lines": lines, "offset": end, "ended": ended}

        def stream() -> Iterator[bytes]:
            nonlocal lines, end, ended
            while True:
                for line in lines:
                    yield (line + "\n").encode()
                if ended:
                    return
                time.sleep(LOG_POLL_S)
                lines, end, ended = backend.logs(job_id, end, key)

        return StreamingResponse(stream(), media_type="text/plain; charset=utf-8")

    @app.post(f"/{API_VERSION}/jobs/{{job_id}}/cancel", responses=ERRORS)
    def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (a finished one is left as it is)."""
        return backend.cancel(job_id, _key(request))

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}/adapter", responses={
        **ERRORS, 409: {"model": Problem, "description": "the job has no adapter (yet)"}})
    def adapter(request: Request, job_id: str) -> AdapterListing:
        """A finished job's adapter: each file with its size, sha256 and download URL."""
        found = backend.adapter(job_id, _key(request))
        files = [AdapterFile(name=n, size=m["size"], sha256=m["sha256"],
                             url=f"/{API_VERSION}/jobs/{job_id}/adapter/files/{n}")
                 for n, m in sorted(found["manifest"]["files"].items())]
        return AdapterListing(job_id=job_id, adapter_uri=found["adapter_uri"], files=files, manifest=found["manifest"])

    @app.get(f"/{API_VERSION}/jobs/{{job_id}}/adapter/files/{{name}}", response_class=StreamingResponse,
             responses={**ERRORS, 200: {"content": {"application/octet-stream": {}},
                                        "description": "the file; X-Content-SHA256 is its hex sha256"}})
    def adapter_file(request: Request, job_id: str, name: str) -> StreamingResponse:
        """One file of the adapter (only names its manifest lists)."""
        chunks, size, sha256 = backend.adapter_file(job_id, name, _key(request))
        return StreamingResponse(chunks, media_type="application/octet-stream",
                                 headers={"Content-Length": str(size), "X-Content-SHA256": sha256})

    @app.get(f"/{API_VERSION}/tenants", responses=ERRORS)
    def tenants(request: Request) -> list[dict[str, Any]]:
        """Quota, usage, queued and running: the key's tenant (an admin key: every tenant)."""
        return backend.tenants(_key(request))

    return app


async def _read_limited(request: Request) -> bytes | JSONResponse:
    """The body, or a 413 as soon as it is known to be over the limit (never read whole)."""
    too_big = _problem(413, SpecError([f"body: larger than {MAX_BODY_BYTES} bytes — a spec is a few KB; send only "
                                       "the spec"]))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return too_big
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:
            return too_big
    return bytes(body)


def openapi_schema() -> dict[str, Any]:
    """The API's OpenAPI document (``deploy/openapi.json``; served at /openapi.json)."""
    return create_app(None).openapi()  # type: ignore[arg-type] - the schema needs no backend
