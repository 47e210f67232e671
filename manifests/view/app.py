"""`dpp view`: the read-only web app (FastAPI) over one or more corpora, and the server that runs it.

Routes (all GET): `/` the page, `/static/...` its files, `/api/corpora` the corpora, and under
`/api/corpora/{corpus}/`: `samples` (a filtered, sorted page), `samples/{key}` (one sample),
`samples/{key}/image.png` and `mask.png`, `audit`. A sample is named by (corpus index, key) and found in
the manifests; no path from the URL ever reaches the file system.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from manifests.audit import audit
from manifests.errors import DppError, UsageError, first_line
from manifests.view.index import Corpus, NotFound, mask_png

STATIC = Path(__file__).parent / "static"


def create_app(corpora: list[Corpus]) -> FastAPI:
    app = FastAPI(title="dpp view", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    audits: dict[int, dict] = {}
    lock = threading.Lock()

    def corpus(ci: int) -> Corpus:
        if not 0 <= ci < len(corpora):
            raise NotFound(f"no corpus {ci}; there are {len(corpora)}")
        return corpora[ci]

    @app.exception_handler(NotFound)
    def _not_found(request: Request, e: NotFound):
        return JSONResponse({"error": str(e)}, status_code=404)

    @app.exception_handler(UsageError)
    def _bad_request(request: Request, e: UsageError):
        return JSONResponse({"error": str(e)}, status_code=400)

    @app.exception_handler(DppError)  # Damaged, and a damaged corpus refused by the audit
    def _damaged(request: Request, e: DppError):
        return JSONResponse({"error": str(e), "details": e.details, "damaged": True}, status_code=500)

    @app.get("/")
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/corpora")
    def list_corpora():
        return [c.summary() for c in corpora]

    @app.get("/api/corpora/{ci}/samples")
    def samples(ci: int, request: Request):
        return corpus(ci).page(dict(request.query_params))

    @app.get("/api/corpora/{ci}/samples/{key}")
    def sample(ci: int, key: str):
        return corpus(ci).detail(key)

    @app.get("/api/corpora/{ci}/samples/{key}/image.png")
    def image(ci: int, key: str):
        return Response(corpus(ci).member(key, "png"), media_type="image/png")

    @app.get("/api/corpora/{ci}/samples/{key}/mask.png")
    def mask(ci: int, key: str):
        return Response(mask_png(corpus(ci).member(key, "seg.png")), media_type="image/png")

    @app.get("/api/corpora/{ci}/audit")
    def audit_of(ci: int):
        c = corpus(ci)
        with lock:  # the audit reads every manifest and hashes every shard: once per corpus
            if ci not in audits:
                audits[ci] = audit([c.root])
        return audits[ci]

    return app


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or a UsageError naming why not (in use, no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UsageError(f"--host {host!r} is not an address this machine has ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        why = e.strerror or first_line(e)
        raise UsageError(f"--port {port}: cannot listen on {host}:{port} ({why})") from None
    sock.set_inheritable(True)
    return sock


def make_server(corpora: list[Corpus], log_level: str = "warning"):
    """A uvicorn Server for the app (run it with `server.run(sockets=[listen(host, port)])`)."""
    import uvicorn

    config = uvicorn.Config(create_app(corpora), log_level=log_level, access_log=False, lifespan="off")
    return uvicorn.Server(config)


@contextmanager
def running(corpora: list[Corpus], host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The app served from a background thread while the block runs (port 0: a free one); yields its
    base URL. For tests and the benchmark; `dpp view` runs the server in the foreground."""
    sock = listen(host, port)
    server = make_server(corpora)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("dpp view: the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
