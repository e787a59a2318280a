"""Fake LLM judge: an OpenAI-compatible chat endpoint that answers scripted verdicts, run as its own process::

    python -m tests.fakes.judge --host 127.0.0.1 --port 0 [--script FILE.json]

It prints ``READY <port>`` once it listens; SIGTERM/SIGINT stop it with status 0.

``POST /v1/chat/completions`` reads the two answers out of the judge prompt (the text between ``[The Start of
Assistant A's Answer]`` and its end marker, and the same for B) and replies with the ``reply`` of the first rule
whose every given field matches exactly: ``a`` (answer A), ``b`` (answer B), ``contains`` (a substring of the
whole user message). No rule matches → ``default`` (``[[C]]`` unless the script says otherwise). A rule may give
``status`` instead of ``reply``: that HTTP status with an OpenAI error body. A script is
``{"rules": [...], "default": "..."}``.

``GET /v1/models`` lists ``fake-judge``. Introspection: ``GET /_judge/calls`` (``{"calls": N, "prompts": [...]}``,
every chat request's user message), ``POST /_judge/script`` (replace the script; body: the script),
``POST /_judge/reset`` (forget the calls).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
from typing import Any

from aiohttp import web

_A = re.compile(r"\[The Start of Assistant A's Answer\]\n(.*?)\n\[The End of Assistant A's Answer\]", re.DOTALL)
_B = re.compile(r"\[The Start of Assistant B's Answer\]\n(.*?)\n\[The End of Assistant B's Answer\]", re.DOTALL)


class Judge:
    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.prompts: list[str] = []

    def reply(self, user: str) -> tuple[int, str]:
        a = _A.search(user)
        b = _B.search(user)
        answers = {"a": a.group(1) if a else None, "b": b.group(1) if b else None}
        for rule in self.script.get("rules", []):
            if "a" in rule and rule["a"] != answers["a"]:
                continue
            if "b" in rule and rule["b"] != answers["b"]:
                continue
            if "contains" in rule and rule["contains"] not in user:
                continue
            if "status" in rule:
                return int(rule["status"]), ""
            return 200, str(rule["reply"])
        return 200, str(self.script.get("default", "[[C]]"))

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        self.prompts.append(user)
        status, text = self.reply(user)
        if status != 200:
            error = {"error": {"message": "scripted failure", "type": "server_error", "param": None, "code": status}}
            return web.json_response(error, status=status)
        return web.json_response(
            {
                "id": f"judge-{len(self.prompts)}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})

    async def calls(self, request: web.Request) -> web.Response:
        return web.json_response({"calls": len(self.prompts), "prompts": self.prompts})

    async def set_script(self, request: web.Request) -> web.Response:
        self.script = await request.json()
        return web.json_response({"ok": True})

    async def reset(self, request: web.Request) -> web.Response:
        self.prompts.clear()
        return web.json_response({"ok": True})


async def serve(judge: Judge, host: str, port: int) -> None:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", judge.chat)
    app.router.add_get("/v1/models", judge.models)
    app.router.add_get("/_judge/calls", judge.calls)
    app.router.add_post("/_judge/script", judge.set_script)
    app.router.add_post("/_judge/reset", judge.reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible LLM judge with scripted verdicts")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", default=None, help="JSON script: {rules: [...], default: ...}")
    args = parser.parse_args(argv)
    script: dict[str, Any] = {}
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            script = json.load(f)
    asyncio.run(serve(Judge(script), args.host, args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
