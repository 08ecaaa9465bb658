"""The CLI's side of the REST API: the scheduler's call names over HTTP (stdlib only, so the
client needs neither Ray nor an HTTP library), and adapter downloads verified file by file."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from ..auth import AuthError, Forbidden
from ..errors import AdapterError, JobNotFound, LorafarmError, SchedulerUnavailable, SpecError

V = "/v1"


class RestClient:
    def __init__(self, base_url: str, key: str | None):
        self.base = base_url.rstrip("/")
        self._key = key  # sent only as the Authorization header

    # -- the scheduler's calls, by name (lorafarm.scheduler.client.call routes here) --
    def call(self, method: str, *args: Any, timeout: float = 60.0) -> Any:
        q = urllib.parse.quote
        if method == "submit":
            return self.request("POST", f"{V}/jobs", args[0], timeout=timeout)
        if method == "list":
            tenant, state = (list(args) + [None, None])[:2]
            params = urllib.parse.urlencode({k: v for k, v in (("tenant", tenant), ("state", state)) if v})
            return self.request("GET", f"{V}/jobs" + (f"?{params}" if params else ""), timeout=timeout)
        if method in ("status", "events", "cancel"):
            suffix = {"status": "", "events": "/events", "cancel": "/cancel"}[method]
            return self.request("POST" if method == "cancel" else "GET", f"{V}/jobs/{q(args[0], safe='')}{suffix}",
                                timeout=timeout)
        if method == "logs":
            job_id, offset = args[0], (args[1] if len(args) > 1 else 0)
            r = self.request("GET", f"{V}/jobs/{q(job_id, safe='')}/logs?offset={int(offset)}", timeout=timeout)
            return r["lines"], r["offset"], r["ended"]
        if method == "tenants":
            return self.request("GET", f"{V}/tenants", timeout=timeout)
        raise LorafarmError(f"`{method}` is not available through the REST API — run it with Ray access "
                            "(without --api / LORAFARM_API)")

    def request(self, verb: str, path: str, body: Any = None, timeout: float = 60.0) -> Any:
        with self._open(verb, path, body, timeout) as r:
            return json.loads(r.read())

    def _open(self, verb: str, path: str, body: Any = None, timeout: float = 60.0):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.base + path, data=data, method=verb, headers=headers)
        try:
            return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - the user's --api URL
        except urllib.error.HTTPError as e:
            raise _error(e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise SchedulerUnavailable(f"no lorafarm API at {self.base} ({reason}) — check --api / LORAFARM_API "
                                       "(the scheduler serves it with `lorafarm serve --api-port N`)") from None

    # -- adapters --
    def download_adapter(self, job_id: str, dest: str | Path, force: bool = False) -> dict[str, Any]:
        """Write job ``job_id``'s adapter into ``dest`` (new or empty; ``force``: replaced), each
        file checked against the sha256 and size the API lists; returns the manifest."""
        from ..storage import check_output_dir, output_dir

        check_output_dir(dest, force)
        listing = self.request("GET", f"{V}/jobs/{urllib.parse.quote(job_id, safe='')}/adapter")
        files = listing["files"]
        unsafe = [f["name"] for f in files if f["name"] in ("", ".", "..") or "/" in f["name"] or "\\" in f["name"]]
        if unsafe:
            raise AdapterError(f"job {job_id}: the adapter names files outside it ({', '.join(unsafe)}) — refusing it")
        with output_dir(dest, force) as out:
            for f in files:
                digest, size = hashlib.sha256(), 0
                with self._open("GET", f["url"], timeout=300) as r, open(out / f["name"], "wb") as w:
                    while block := r.read(1 << 20):
                        digest.update(block)
                        size += len(block)
                        w.write(block)
                if digest.hexdigest() != f["sha256"] or size != f["size"]:
                    raise AdapterError(f"{f['name']}: sha256/size differ from the API's listing after download — "
                                       "retry the pull")
            (out / "manifest.json").write_text(json.dumps(listing["manifest"], indent=2, sort_keys=True))
        return {**listing["manifest"], "adapter_uri": listing["adapter_uri"]}


def _error(e: urllib.error.HTTPError) -> LorafarmError:
    try:
        payload = json.loads(e.read() or b"{}")
    except ValueError:
        payload = {}
    problems = payload.get("problems") or [payload.get("error") or f"HTTP {e.code} {e.reason}"]
    if e.code == 400 or e.code == 413:
        return SpecError(problems)
    kind = {401: AuthError, 403: Forbidden, 404: JobNotFound, 503: SchedulerUnavailable}.get(e.code, LorafarmError)
    return kind("; ".join(problems))
