"""gateway/pipeline/arms.py: which arm a request runs (the user's assignment, or X-Aligngate-Arm)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from gateway.config import ExperimentSettings, HelperSettings, HelpersSettings
from gateway.errors import BadRequest
from gateway.pipeline.arms import BUCKETS, ArmChooser, bucket_of, bucket_table, helpers_of, user_key
from tests.gateway.pipeline.support import MODEL, make_rig

REMOTE = HelperSettings(url="http://helpers.invalid/v1", model="helper")
BOTH = HelpersSettings(rewriter=REMOTE, aligner=REMOTE)
EQUAL = {"control": 1, "rewrite": 1, "align": 1, "rewrite+align": 1}
USERS = [f"user-{i}" for i in range(2000)]
ROOT = Path(__file__).resolve().parents[3]


def chooser(arms: dict[str, float], *, allow_override: bool = True, helpers: HelpersSettings = BOTH,
            name: str = "helpers-v1") -> ArmChooser:
    return ArmChooser(ExperimentSettings(name=name, arms=arms, allow_override=allow_override), helpers)


def arms_of(c: ArmChooser, users: list[str]) -> list[str]:
    return [c.choose(None, u).arm for u in users]


# ---------------------------------------------------------------- assignment


@pytest.mark.parametrize("weights", [EQUAL, {"control": 2, "rewrite": 1, "align": 1, "rewrite+align": 1},
                                     {"control": 9, "align": 1}, {"rewrite": 0.3, "align": 0.7}])
def test_users_are_shared_out_by_weight(weights: dict[str, float]) -> None:
    got = Counter(arms_of(chooser(weights), USERS))
    total = sum(weights.values())
    for arm, w in weights.items():
        share = got[arm] / len(USERS)
        assert abs(share - w / total) <= 0.03, (arm, share, w / total, got)
    assert set(got) == {a for a, w in weights.items() if w > 0}


@pytest.mark.parametrize("weights", [EQUAL, {"control": 3, "rewrite": 1, "align": 1, "rewrite+align": 0.5}])
def test_the_bucket_table_matches_the_weights_exactly(weights: dict[str, float]) -> None:
    table = Counter(bucket_table("helpers-v1", tuple(sorted(weights.items()))))
    total = sum(weights.values())
    for arm, w in weights.items():
        assert abs(table[arm] - w / total * BUCKETS) <= 5, (arm, table)


def test_an_arm_with_weight_zero_gets_nobody() -> None:
    c = chooser({"control": 1, "rewrite": 0, "align": 1, "rewrite+align": 0})
    got = Counter(arms_of(c, USERS))
    assert set(got) == {"control", "align"}
    random_draws = Counter(c.choose(None, None).arm for _ in range(500))
    assert set(random_draws) == {"control", "align"}


def test_a_user_keeps_their_arm_across_calls_and_choosers() -> None:
    first = arms_of(chooser(EQUAL), USERS)
    assert arms_of(chooser(EQUAL), USERS) == first
    assert arms_of(chooser(EQUAL), USERS) == first  # the same chooser again
    bucket_table.cache_clear()  # a restart: the table is built anew
    assert arms_of(chooser(dict(reversed(list(EQUAL.items())))), USERS) == first  # config order does not matter


def test_a_user_keeps_their_arm_in_another_process() -> None:
    """A replica (or a restart) computes the same assignment: no state, no salted hash()."""
    code = (
        "import json, sys\n"
        "from gateway.config import ExperimentSettings, HelpersSettings, HelperSettings\n"
        "from gateway.pipeline.arms import ArmChooser\n"
        "r = HelperSettings(url='http://h.invalid/v1', model='m')\n"
        f"e = ExperimentSettings(name='helpers-v1', arms={EQUAL!r})\n"
        "c = ArmChooser(e, HelpersSettings(rewriter=r, aligner=r))\n"
        "print(json.dumps([c.choose(None, f'user-{i}').arm for i in range(300)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=ROOT, timeout=60)
    assert json.loads(out.stdout) == arms_of(chooser(EQUAL), USERS[:300])


def test_the_experiment_name_reshuffles() -> None:
    a = arms_of(chooser(EQUAL, name="exp-a"), USERS)
    b = arms_of(chooser(EQUAL, name="exp-b"), USERS)
    same = sum(x == y for x, y in zip(a, b, strict=True)) / len(USERS)
    assert 0.18 < same < 0.32  # independent: ~1/4 agree by chance


def _moves(before: dict[str, float], after: dict[str, float]) -> Counter[tuple[str, str]]:
    a = bucket_table("helpers-v1", tuple(sorted(before.items())))
    b = bucket_table("helpers-v1", tuple(sorted(after.items())))
    return Counter((x, y) for x, y in zip(a, b, strict=True) if x != y)


def test_a_weight_change_moves_only_the_users_it_must() -> None:
    # 1:1:1:1 -> 2:1:1:1: control grows from 25 % to 40 %; at least 15 % of users must move, all to control.
    moves = _moves(EQUAL, {**EQUAL, "control": 2})
    moved = sum(moves.values()) / BUCKETS
    into_control = sum(n for (_, to), n in moves.items() if to == "control") / BUCKETS
    assert 0.14 <= moved <= 0.16, moves  # contiguous ranges in a fixed order would move 30 %
    assert into_control >= 0.14 and moved - into_control <= 0.005, moves
    # the same on 2,000 users, through the chooser
    before = arms_of(chooser(EQUAL), USERS)
    after = arms_of(chooser({**EQUAL, "control": 2}), USERS)
    user_moves = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert len(user_moves) / len(USERS) <= 0.15 + 0.03, Counter(user_moves)


def test_removing_an_arm_moves_only_its_users() -> None:
    moves = _moves(EQUAL, {**EQUAL, "rewrite+align": 0})
    from_removed = sum(n for (src, _), n in moves.items() if src == "rewrite+align")
    assert from_removed >= 0.24 * BUCKETS
    assert sum(moves.values()) - from_removed <= 0.005 * BUCKETS, moves
    # its users are shared out among the others (roughly a third each)
    for arm in ("control", "rewrite", "align"):
        assert 700 <= moves[("rewrite+align", arm)] <= 1000, moves


def test_adding_an_arm_takes_only_its_own_share() -> None:
    moves = _moves({"control": 1, "align": 1}, {"control": 1, "align": 1, "rewrite": 1})
    into_new = sum(n for (_, to), n in moves.items() if to == "rewrite")
    assert abs(into_new / BUCKETS - 1 / 3) <= 0.01, moves
    assert sum(moves.values()) - into_new <= 0.005 * BUCKETS, moves  # the calibration's few tenths of a percent


def test_bucket_of_is_sha256_of_experiment_and_key() -> None:
    digest = hashlib.sha256(b"exp\x00alice").digest()
    assert bucket_of("exp", "alice") == int.from_bytes(digest[:8], "big") % BUCKETS


def test_the_user_key_comes_from_the_header_then_the_user_field_then_the_api_key() -> None:
    assert user_key(" alice ", "bob", "Bearer sk-1") == ("alice", "header")
    assert user_key(None, "bob", "Bearer sk-1") == ("bob", "user")
    assert user_key("  ", "bob", None) == ("bob", "user")
    key, source = user_key(None, None, "Bearer sk-1")
    assert source == "api_key"
    assert key == "api-key:" + hashlib.sha256(b"sk-1").hexdigest()  # never the token itself
    assert "sk-1" not in key
    assert user_key(None, None, None) == (None, "random")
    assert user_key(None, "", "Basic abc") == (None, "random")


# ---------------------------------------------------------------- forced arms


@pytest.mark.parametrize("arm", ["control", "rewrite", "align", "rewrite+align"])
def test_the_header_picks_any_arm(arm: str) -> None:
    a = chooser({"control": 1}).choose(arm, "alice")
    assert (a.arm, a.forced) == (arm, True)


def test_the_header_is_read_case_and_space_insensitively() -> None:
    c = chooser({"control": 1})
    assert c.choose(" Rewrite+Align ").arm == "rewrite+align"
    assert c.choose("ALIGN").arm == "align"


def test_allow_override_false_ignores_the_header() -> None:
    c = chooser({"control": 1, "align": 2}, allow_override=False)
    for header in ("control", "rewrite", "no-such-arm"):  # not even checked: the header means nothing here
        a = c.choose(header, "alice")
        assert a == c.choose(None, "alice") and not a.forced


@pytest.mark.parametrize("header", ["bogus", "", "rewrite align", "align+rewrite"])
def test_an_unknown_arm_is_a_400(header: str) -> None:
    with pytest.raises(BadRequest) as info:
        chooser({"control": 1}).choose(header)
    err = info.value
    assert err.status == 400
    assert err.code == "invalid_arm"
    assert err.param == "X-Aligngate-Arm"
    assert repr(header) in err.message and "rewrite+align" in err.message


@pytest.mark.parametrize(
    ("helpers", "arm", "missing"),
    [
        (HelpersSettings(rewriter=REMOTE), "align", "aligner"),
        (HelpersSettings(rewriter=REMOTE), "rewrite+align", "aligner"),
        (HelpersSettings(aligner=REMOTE), "rewrite", "rewriter"),
        (HelpersSettings(aligner=REMOTE), "rewrite+align", "rewriter"),
        (HelpersSettings(), "rewrite", "rewriter"),
        (HelpersSettings(), "align", "aligner"),
    ],
)
def test_an_arm_whose_helper_is_not_configured_is_a_400(helpers: HelpersSettings, arm: str, missing: str) -> None:
    c = chooser({"control": 1}, helpers=helpers)
    with pytest.raises(BadRequest) as info:
        c.choose(arm)
    err = info.value
    assert (err.status, err.code, err.param) == (400, "arm_unavailable", "X-Aligngate-Arm")
    assert f"helpers.{missing}" in err.message
    assert c.choose("control").arm == "control"


def test_helpers_of_each_arm() -> None:
    assert helpers_of("control") == ()
    assert helpers_of("rewrite") == ("rewriter",)
    assert helpers_of("align") == ("aligner",)
    assert helpers_of("rewrite+align") == ("rewriter", "aligner")


# ---------------------------------------------------------------- through the app


def chat(**fields: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "how to bake bread"}], **fields}


async def post(rig_app: object, body: dict[str, object], headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=rig_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        return await client.post("/v1/chat/completions", json=body, headers=headers or {})


def _user_in(c: ArmChooser, arm: str) -> str:
    return next(u for u in USERS if c.choose(None, u).arm == arm)


async def test_the_response_names_the_arm_it_ran() -> None:
    rig = make_rig(arms={"control": 1, "align": 1}, experiment="helpers-v1")
    aligned_user = _user_in(chooser({"control": 1, "align": 1}), "align")
    r = await post(rig.app, chat(), {"X-Aligngate-User": aligned_user})
    assert r.status_code == 200
    assert r.headers["x-aligngate-arm"] == "align"
    assert r.json()["choices"][0]["message"]["content"].startswith("CORRECTED: ")
    r = await post(rig.app, chat(), {"X-Aligngate-Arm": "control", "X-Aligngate-User": aligned_user})
    assert r.headers["x-aligngate-arm"] == "control"
    assert r.json()["choices"][0]["message"]["content"] == "Answer 0: how to bake bread"


async def test_users_keep_their_arm_through_the_app_by_header_or_user_field() -> None:
    weights = {"control": 1, "rewrite": 1, "align": 1, "rewrite+align": 1}
    rig = make_rig(arms=weights, experiment="helpers-v1")
    c = chooser(weights)
    for user in USERS[:20]:
        want = c.choose(None, user).arm
        by_header = [(await post(rig.app, chat(), {"X-Aligngate-User": user})).headers["x-aligngate-arm"]
                     for _ in range(2)]
        by_field = (await post(rig.app, chat(user=user))).headers["x-aligngate-arm"]
        assert by_header == [want, want] and by_field == want
    # the header wins over the user field
    u0, u1 = _user_in(c, "control"), _user_in(c, "align")
    r = await post(rig.app, chat(user=u1), {"X-Aligngate-User": u0})
    assert r.headers["x-aligngate-arm"] == "control"


async def test_the_api_key_is_the_user_when_keys_are_configured() -> None:
    weights = {"control": 1, "align": 1}
    rig = make_rig(arms=weights, experiment="helpers-v1", api_keys=["sk-a", "sk-b", "sk-c", "sk-d"])
    c = chooser(weights)
    for key in ("sk-a", "sk-b", "sk-c", "sk-d"):
        want = c.choose(None, user_key(None, None, f"Bearer {key}")[0]).arm
        got = {(await post(rig.app, chat(), {"Authorization": f"Bearer {key}"})).headers["x-aligngate-arm"]
               for _ in range(3)}
        assert got == {want}


async def test_without_a_user_key_each_request_is_drawn_at_random() -> None:
    rig = make_rig(arms={"control": 1, "align": 1})
    seen = Counter([(await post(rig.app, chat())).headers["x-aligngate-arm"] for _ in range(60)])
    assert set(seen) == {"control", "align"}, seen


async def test_a_bad_arm_header_is_an_openai_shaped_400_and_reaches_no_backend() -> None:
    rig = make_rig(with_aligner=False)
    for header, code in (("bogus", "invalid_arm"), ("align", "arm_unavailable")):
        r = await post(rig.app, chat(), {"X-Aligngate-Arm": header})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, "X-Aligngate-Arm")
    assert rig.backend.requests == []


async def test_override_off_runs_the_assigned_arm_whatever_the_header() -> None:
    rig = make_rig(arms={"rewrite": 1}, allow_override=False)
    r = await post(rig.app, chat(), {"X-Aligngate-Arm": "bogus"})
    assert r.status_code == 200
    assert r.headers["x-aligngate-arm"] == "rewrite"
    assert rig.backend.requests[0][1]["messages"][-1]["content"] != "how to bake bread"
