"""gateway/ui/pages.py: the static pages of /ui, their content types, caching and security headers, and
``server.ui: false``; and a static check of the files themselves (no inline script or style, no markup built
from strings, every imported module served)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gateway.app import ROUTES
from gateway.ui.pages import CSP, PAGE_ROUTES, static_files
from tests.gateway.conftest import GatewayFactory

STATIC = Path(__file__).resolve().parents[3] / "gateway" / "ui" / "static"
BACKENDS = [{"name": "m", "urls": ["http://127.0.0.1:9/v1"]}]
EXPECTED_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _secure(headers: object) -> None:
    h = dict(headers)  # type: ignore[call-overload]
    assert h["content-security-policy"] == EXPECTED_CSP
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "no-referrer"
    assert h["cache-control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{32}"', h["etag"])


def test_the_policy_is_the_strict_one() -> None:
    assert CSP == EXPECTED_CSP
    assert "unsafe" not in CSP


@pytest.mark.parametrize("path", ["/ui", "/ui/"])
async def test_the_page(gateway: GatewayFactory, path: str) -> None:
    async with gateway(BACKENDS) as (_, client):
        r = await client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    _secure(r.headers)
    assert '<script type="module" src="/ui/app.js"></script>' in r.text
    assert r.content == (STATIC / "index.html").read_bytes()


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript; charset=utf-8"), ("app.css", "text/css; charset=utf-8"),
     ("diff.js", "text/javascript; charset=utf-8"), ("sse.js", "text/javascript; charset=utf-8")],
)
async def test_the_files(gateway: GatewayFactory, name: str, content_type: str) -> None:
    async with gateway(BACKENDS) as (_, client):
        r = await client.get(f"/ui/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"] == content_type
    _secure(r.headers)
    assert r.content == (STATIC / name).read_bytes()


async def test_etag_revalidation_head_and_methods(gateway: GatewayFactory) -> None:
    async with gateway(BACKENDS) as (_, client):
        first = await client.get("/ui/app.js")
        etag = first.headers["etag"]
        again = await client.get("/ui/app.js", headers={"If-None-Match": f'"other", W/{etag}'})
        changed = await client.get("/ui/app.js", headers={"If-None-Match": '"other"'})
        head = await client.head("/ui")
        post = await client.post("/ui")
        unknown = await client.get("/ui/nothing.js")
        index_tag = (await client.get("/ui")).headers["etag"]
    assert again.status_code == 304 and again.content == b""
    _secure(again.headers)
    assert again.headers["etag"] == etag
    assert changed.status_code == 200 and changed.content == first.content
    assert head.status_code == 200 and head.content == b""
    _secure(head.headers)
    assert post.status_code == 405 and post.headers["allow"] == "GET"
    assert unknown.status_code == 404 and unknown.json()["error"]["message"] == "Unknown route: GET /ui/nothing.js"
    for refused in (post, unknown):  # an error under /ui carries the pages' CSP too
        assert refused.headers["content-security-policy"] == EXPECTED_CSP
        assert refused.headers["x-content-type-options"] == "nosniff"
    assert index_tag != etag


async def test_server_ui_false_turns_the_pages_off(gateway: GatewayFactory) -> None:
    async with gateway(BACKENDS, ui=False) as (app, client):
        page = await client.get("/ui")
        script = await client.get("/ui/app.js")
        health = await client.get("/healthz")
    assert page.status_code == 404 and script.status_code == 404
    assert page.json()["error"]["message"] == "Unknown route: GET /ui"
    assert "content-security-policy" not in page.headers  # no pages, nothing of theirs
    assert health.status_code == 200
    assert not [path for path in app.router.table if path.startswith("/ui")]


def test_every_file_has_a_route_in_the_table() -> None:
    names = {f.name for f in static_files()}
    assert {"index.html", "app.js", "app.css"} <= names
    assert names == {p.name for p in STATIC.iterdir() if p.is_file()}  # nothing of an unknown kind left out
    paths = {path for _, path, _ in PAGE_ROUTES}
    assert paths == {"/ui", "/ui/"} | {f"/ui/{n}" for n in names - {"index.html"}}
    assert set(PAGE_ROUTES) <= set(ROUTES)


# ------------------------------------------------------------------------------------------ the files


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_data(self, data: str) -> None:
        if getattr(self, "_in_script", False):
            self.script_text += data

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


def test_the_page_has_no_inline_script_or_style() -> None:
    parser = _Tags()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    assert parser.tags
    for tag, attrs in parser.tags:
        assert tag != "style", "inline <style> (the CSP refuses it)"
        assert "style" not in attrs, f"a style attribute on <{tag}>"
        assert not [a for a in attrs if a.startswith("on")], f"an inline handler on <{tag}>"
        if tag == "script":
            assert attrs.get("src", "").startswith("/ui/") and attrs.get("type") == "module"
    assert parser.script_text.strip() == ""


@pytest.mark.parametrize("path", sorted(STATIC.glob("*.js")), ids=lambda p: p.name)
def test_scripts_build_no_markup_from_strings(path: Path) -> None:
    code = path.read_text(encoding="utf-8")
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                   "setTimeout(\"", "javascript:", ".style."):
        assert banned not in code, f"{path.name} uses {banned}"
    for module in re.findall(r'from "\./([^"]+)"', code):
        assert (STATIC / module).is_file(), f"{path.name} imports {module}, which is not shipped"
