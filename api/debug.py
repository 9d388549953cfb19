"""``GET /api/v1/debug/runtime``: the process's asyncio tasks and threads, for the soak (issue 16);
for a leak hunt, also ``?types=N``: the N most numerous live objects by type; ``?malloc=N``: glibc's
heap (size, in use, free) and, if the server runs with ``PYTHONTRACEMALLOC=1``, the N lines that
allocated most of what is alive and the N that grew most since the previous ``malloc`` call;
``?buffers=N``: bytes and bytearrays held by containers, and the N container types holding most
(see ``api.memstats``). Each is computed only when asked.

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

from api import errors, memstats
from api.console.sessions import read_admin_token
from api.errors import ApiError, json_error


def _count(request: web.Request, name: str, what: str) -> int | None:
    """The ``?name=N`` of a listing, 1 to 1000; None if not asked. Raises ApiError if not a number."""
    if name not in request.query:
        return None
    try:
        return min(max(int(request.query[name]), 1), 1000)
    except ValueError:
        raise ApiError(errors.INVALID_ARGS, f"{name}=N: how many {what} to list, 1 to 1000") from None


def routes(data_dir: Path) -> list[web.RouteDef]:
    malloc_report = memstats.MallocReport()

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
        try:
            types = _count(request, "types", "object types")
            malloc = _count(request, "malloc", "allocating lines")
            buffers = _count(request, "buffers", "holder types")
        except ApiError as error:
            return json_error(error)
        if types is not None:
            # The most numerous live objects by type, for a leak hunt: gc.get_objects() walks every
            # tracked object (a few hundred ms on a busy server), so only when asked.
            counts = Counter(type(o).__qualname__ for o in gc.get_objects())
            body["types"] = dict(counts.most_common(types))
        if malloc is not None:
            body["malloc"] = malloc_report(malloc)
        if buffers is not None:
            body["buffers"] = memstats.buffers(buffers)
        return web.json_response(body)

    return [web.get("/api/v1/debug/runtime", runtime)]
