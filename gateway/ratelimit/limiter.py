"""The rate-limit policy of the inference routes (``server.rate_limits``): which buckets a request is charged to,
the 429 beyond them, OpenAI's ``x-ratelimit-*`` headers, and settling token reservations from ``usage``.

A request is charged to its API key's buckets (``per_key``, or the key's entry in ``keys``: the presented Bearer
token, hashed; requests without one share a bucket) and, when it sends ``X-Aligngate-User``, to that user's buckets
within the key (``per_user``): one request to each requests bucket, and to each tokens bucket a reservation of
``len(body) / 4`` (the prompt, estimated) plus ``max_completion_tokens`` or ``max_tokens`` (else
``default_max_tokens``) times ``n`` (or ``best_of``). All buckets are charged or none is (``buckets.Buckets``).

Beyond a limit the request is answered 429 ``rate_limit_exceeded`` with ``Retry-After`` (whole seconds until it would
fit) before any upstream sees it, and counted in ``aligngate_rate_limited_total{scope,reason}`` (scope ``key`` or
``user``, reason ``requests`` or ``tokens``). Every answer of a limited request, the 429 included, carries
``x-ratelimit-limit-*`` (the per-minute limit), ``x-ratelimit-remaining-*`` (what is left, whole units) and
``x-ratelimit-reset-*`` (until the bucket is full again, written as OpenAI writes it: ``20ms``, ``1.5s``,
``6m0s``) for requests and for tokens, each of the bucket with the least left; they replace an upstream's own. A
request the store could not check (Redis unavailable: it fails open) carries the limits alone.

Once the answer has been sent, a token reservation is settled (:func:`settling`): an error status gives it all back,
an answer with ``usage`` (a body's, or a stream's last chunk with ``stream_options.include_usage``) is charged what
it used (prompt plus completion tokens), and an answer without ``usage`` keeps the reservation.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import metrics
from gateway.auth import parse_key
from gateway.config import RateLimit, RateLimitSettings
from gateway.errors import RateLimited
from gateway.ratelimit.buckets import Buckets, BucketState, Charge, Decision, Limit, MemoryBuckets
from models.wire.read import usage_counts
from models.wire.schemas import ChatCompletionRequest, CompletionRequest
from models.wire.sse import iter_events

logger = logging.getLogger(__name__)

Dimension = Literal["requests", "tokens"]
ScopeName = Literal["key", "user"]
_DIMENSIONS: tuple[Dimension, ...] = ("requests", "tokens")
#: Bytes of a request body taken for one prompt token when estimating a reservation.
BYTES_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class _Limits:
    """The limits of one scope (None: no limit)."""

    requests: Limit | None
    tokens: Limit | None


def _limit(per_minute: int | None, burst: int | None) -> Limit | None:
    return Limit(per_minute, burst or per_minute) if per_minute else None


def _limits(rate: RateLimit, base: RateLimit | None = None) -> _Limits:
    """``rate``'s limits; with ``base``, a field ``rate`` leaves unset is ``base``'s."""
    def pick(name: str) -> int | None:
        value: int | None = getattr(rate, name)
        return getattr(base, name) if value is None and base is not None else value

    return _Limits(
        _limit(pick("requests_per_minute"), pick("burst_requests")),
        _limit(pick("tokens_per_minute"), pick("burst_tokens")),
    )


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let through: its token reservations (settled after the answer) and the headers it carries."""

    tokens: tuple[Charge, ...]
    reserved: int
    headers: list[tuple[bytes, bytes]]


def duration(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m5s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(round(seconds * 1000), 1)}ms"
    hours, rest = divmod(round(seconds, 3), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{int(hours)}h{int(minutes)}m{text}s"
    if minutes:
        return f"{int(minutes)}m{text}s"
    return f"{text}s"


def reserved_tokens(req: ChatCompletionRequest | CompletionRequest, body_bytes: int, default_max_tokens: int) -> int:
    """Tokens a request is charged before its answer: the prompt, estimated from the body's size, plus the most
    the answer may take."""
    out = req.max_completion_tokens if isinstance(req, ChatCompletionRequest) else None
    if out is None:
        out = req.max_tokens
    if out is None:
        out = default_max_tokens
    choices = max(req.n or 1, (req.best_of or 1) if isinstance(req, CompletionRequest) else 1)
    return body_bytes // BYTES_PER_TOKEN + out * choices


def _key_id(authorization: str | None) -> tuple[str, bytes | None]:
    """The bucket identity of a request's API key (a digest, never the key) and the digest ``keys`` is looked up by."""
    if not authorization:
        return "-", None
    scheme, _, token = authorization.partition(" ")
    token = token.strip() if scheme.lower() == "bearer" else authorization
    digest = hashlib.sha256(token.encode("utf-8")).digest()
    return digest.hex(), digest


class RateLimiter:
    """Charges inference requests to their key's and user's buckets (one instance per worker process, and a new one
    when ``server.rate_limits`` is reloaded, over the same ``buckets``)."""

    def __init__(self, settings: RateLimitSettings, buckets: Buckets | None = None) -> None:
        self.settings = settings
        self.buckets: Buckets = buckets or MemoryBuckets(settings.max_tracked)
        self._per_key = _limits(settings.per_key)
        self._per_user = _limits(settings.per_user)
        self._keys = {parse_key(key): _limits(rate, settings.per_key) for key, rate in settings.keys.items()}

    async def admit(
        self, authorization: str | None, user: str | None, req: ChatCompletionRequest | CompletionRequest,
        body_bytes: int,
    ) -> Admission | None:
        """Charge the request (None: no limit applies to it); raises ``RateLimited`` (429) when a bucket is short."""
        key_id, digest = _key_id(authorization)
        scopes: list[tuple[ScopeName, tuple[str, ...], _Limits]] = [
            ("key", ("key", key_id), self._keys.get(digest, self._per_key) if digest else self._per_key)
        ]
        if user is not None:
            user_id = hashlib.sha256(user.encode("utf-8", "surrogateescape")).hexdigest()[:32]
            scopes.append(("user", ("user", key_id, user_id), self._per_user))
        reserve = 0
        charges: list[Charge] = []
        labels: list[tuple[ScopeName, Dimension]] = []
        for scope, ident, limits in scopes:
            if limits.requests is not None:
                charges.append(Charge((*ident, "requests"), limits.requests, 1))
                labels.append((scope, "requests"))
            if limits.tokens is not None:
                reserve = reserve or reserved_tokens(req, body_bytes, self.settings.default_max_tokens)
                charges.append(Charge((*ident, "tokens"), limits.tokens, reserve))
                labels.append((scope, "tokens"))
        if not charges:
            return None
        decision = await self.buckets.acquire(charges)
        headers = _headers(charges, labels, decision)
        if decision.refused is not None:
            scope, dimension = labels[decision.refused]
            metrics.rate_limited(scope, dimension)
            charge = charges[decision.refused]
            retry = max(math.ceil(decision.retry_after_s), 1)
            whose = "this API key" if scope == "key" else "this user (X-Aligngate-User)"
            raise RateLimited(
                f"Rate limit reached for {dimension} per minute of {whose}: limit {charge.limit.per_minute}, "
                f"requested {charge.amount:g}. Retry in {retry}s.",
                headers={"Retry-After": str(retry), **{k.decode(): v.decode() for k, v in headers}},
            )
        tokens = tuple(c for c, (_, dim) in zip(charges, labels, strict=True) if dim == "tokens")
        return Admission(tokens, reserve, headers)

    async def settle(self, admission: Admission, status: int, used: int | None) -> None:
        """Settle the token reservation once the answer is known: an error status (or none) gives it back, a known
        ``used`` is charged instead, an unknown one keeps it."""
        if not admission.tokens:
            return
        if status == 0 or status >= 400:
            back = float(admission.reserved)
        elif used is None:
            return
        else:
            back = float(admission.reserved - used)
        await self.buckets.adjust(admission.tokens, back)


def _headers(charges: Sequence[Charge], labels: Sequence[tuple[ScopeName, Dimension]],
             decision: Decision) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*`` trio for each limited dimension, of the bucket with the least left (the refused
    one, when a charge did not fit); of an unchecked decision (the store unavailable), the limits alone."""
    out: list[tuple[bytes, bytes]] = []
    if decision.unchecked:
        for dimension in _DIMENSIONS:
            limits = [c.limit.per_minute for c, (_, dim) in zip(charges, labels, strict=True) if dim == dimension]
            if limits:
                out.append((b"x-ratelimit-limit-" + dimension.encode(), str(min(limits)).encode()))
        return out
    for dimension in _DIMENSIONS:
        picked: tuple[Charge, BucketState] | None = None
        for i, (charge, state) in enumerate(zip(charges, decision.states, strict=True)):
            if labels[i][1] != dimension:
                continue
            if i == decision.refused:
                picked = (charge, state)
                break
            if picked is None or state.remaining < picked[1].remaining:
                picked = (charge, state)
        if picked is None:
            continue
        charge, state = picked
        name = dimension.encode()
        out.append((b"x-ratelimit-limit-" + name, str(charge.limit.per_minute).encode()))
        out.append((b"x-ratelimit-remaining-" + name, str(max(math.floor(state.remaining), 0)).encode()))
        out.append((b"x-ratelimit-reset-" + name, duration(state.full_in_s).encode()))
    return out


def _used(pieces: list[bytes]) -> int | None:
    """Prompt plus completion tokens of an answer's ``usage``, from its last body pieces (a JSON body, or SSE)."""
    data = b"".join(pieces)
    try:
        found = [usage_counts(orjson.loads(data))]
    except orjson.JSONDecodeError:
        found = []
        try:
            for event in iter_events(data):
                if event.data.startswith("{") and '"usage"' in event.data:
                    found.append(usage_counts(orjson.loads(event.data)))
        except (ValueError, orjson.JSONDecodeError):
            return None
    for prompt, completion in reversed(found):
        if prompt is not None or completion is not None:
            return (prompt or 0) + (completion or 0)
    return None


def settling(app: ASGIApp, limiter: RateLimiter, admission: Admission) -> ASGIApp:
    """``app`` (an answer) that, once sent, settles ``admission``'s token reservation from its status and ``usage``."""

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        status = 0
        tail: list[bytes] = []

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            else:
                body = message.get("body")
                if body:
                    tail.append(body)
                    if len(tail) > 2:
                        del tail[0]
            await send(message)

        try:
            await app(scope, receive, watch)
        finally:
            try:
                await limiter.settle(admission, status, _used(tail) if 0 < status < 400 else None)
            except Exception:
                logger.exception("could not settle a token reservation")

    return run
