"""`dpp view`: look at corpora in the browser (a local read-only web app), or write the page as a static
site with --export."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

from flows.cli.args import _common, _int_type, _say


def cmd_view(args) -> int:
    from manifests.view.index import open_corpora

    corpora = open_corpora(args.corpus)  # a folder that is not a corpus: one line, before anything starts
    if args.export is not None:
        from manifests.view.export import export_site

        n = export_site(corpora, args.export)
        _say(
            args,
            f"wrote {args.export}: {n['samples']} samples of {len(corpora)} corpora "
            f"({n['images']} images, {n['damaged']} damaged); open {args.export / 'index.html'}",
        )
        return 0
    from manifests.view.app import listen, make_server

    sock = listen(args.host, args.port)
    server = make_server(corpora)
    host = f"[{args.host}]" if ":" in args.host else args.host
    total = sum(len(c.kept) for c in corpora)
    print(f"dpp view: {len(corpora)} corpora, {total} samples at http://{host}:{args.port}/ (Ctrl-C stops)")
    if not _loopback(args.host):
        print(f"dpp view: warning: --host {args.host} is not loopback; whoever reaches it sees the corpora")
    # index every shard's members in the background, so that pages anywhere in the corpora are quick
    threading.Thread(target=lambda: [c.warm() for c in corpora], daemon=True).start()
    server.run(sockets=[sock])
    return 0


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _add_view(sub) -> None:
    p = sub.add_parser("view", help="look at corpora in the browser: samples, masks, scores, rejects")
    p.add_argument("corpus", type=Path, nargs="+", help="corpus folder(s), shown side by side")
    p.add_argument("--port", type=_int_type(1, 65535), default=8765, help="port to listen on (default 8765)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--export", type=Path, default=None, help="write the page as a static site to this new folder instead"
    )
    _common(p)
    p.set_defaults(func=cmd_view)


PARSERS = {"view": _add_view}
