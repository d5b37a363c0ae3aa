"""The ceiling of the HTTP stack itself: one bare FastAPI endpoint on uvicorn (uvloop, httptools,
access log off), with none of the service's routes, middleware or models.

`bench/bench_service.py --configs bare` runs it beside the service, so the service's own trivial
endpoint and its predictions can be read against what FastAPI on uvicorn can do at all on the
same machine in the same run.
"""

from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
