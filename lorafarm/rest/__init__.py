"""The tenant REST API (``lorafarm serve --api-port N``): the scheduler's calls over HTTP with
the same API keys, for tenants who must not hold the Ray cluster's token (a Ray job submission
runs code on the cluster; this API only queues specs). FastAPI app in :mod:`.app`, uvicorn
server in :mod:`.server`, the CLI's client in :mod:`.client`."""
