"""``GET /api/v1/debug/runtime``: the process's asyncio tasks and threads, for the soak (issue 16);
``?types=N``: also the N most numerous live objects by type, for a leak hunt.

The soak watches for leaks a long run would show: RSS and fds it reads from /proc, but the tasks of the
server's event loop only the process knows. Guarded by the server's admin token (``minilive admin
token``) as ``Authorization: Bearer TOKEN``: task counts tell an outsider how busy the node is.
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import threading
from collections import Counter
from pathlib import Path

from aiohttp import web

from api import errors
from api.console.sessions import read_admin_token
from api.errors import ApiError, json_error


def routes(data_dir: Path) -> list[web.RouteDef]:
    async def runtime(request: web.Request) -> web.Response:
        expected = read_admin_token(data_dir)
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        # No admin token made yet: nobody may read it (an empty header must not match an empty token).
        if not expected or not secrets.compare_digest(given.encode(), expected.encode()):
            hint = "send Authorization: Bearer ADMIN_TOKEN (`minilive admin token` prints it)"
            return json_error(ApiError(errors.INVALID_CREDENTIAL, hint))
        body: dict[str, object] = {
            "pid": os.getpid(),
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
        }
        if "types" in request.query:
            try:
                top = min(max(int(request.query["types"]), 1), 1000)
            except ValueError:
                return json_error(ApiError(errors.INVALID_ARGS, "types=N: how many object types to list, 1 to 1000"))
            # The most numerous live objects by type, for a leak hunt: gc.get_objects() walks every
            # tracked object (a few hundred ms on a busy server), so only when asked.
            counts = Counter(type(o).__qualname__ for o in gc.get_objects())
            body["types"] = dict(counts.most_common(top))
        return web.json_response(body)

    return [web.get("/api/v1/debug/runtime", runtime)]
