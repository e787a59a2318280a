"""gateway/pipeline/arms.py: which arm a request runs (the experiment's default, or X-Aligngate-Arm)."""

from __future__ import annotations

import httpx
import pytest

from gateway.config import ExperimentSettings, HelperSettings, HelpersSettings
from gateway.errors import BadRequest
from gateway.pipeline.arms import ArmChooser, helpers_of
from tests.gateway.pipeline.support import MODEL, make_rig

REMOTE = HelperSettings(url="http://helpers.invalid/v1", model="helper")
BOTH = HelpersSettings(rewriter=REMOTE, aligner=REMOTE)


def chooser(arms: dict[str, float], *, allow_override: bool = True, helpers: HelpersSettings = BOTH) -> ArmChooser:
    return ArmChooser(ExperimentSettings(arms=arms, allow_override=allow_override), helpers)


def test_default_is_the_heaviest_arm() -> None:
    assert chooser({"control": 1, "align": 3, "rewrite": 2}).choose(None) == "align"
    assert chooser({"control": 0, "rewrite+align": 0.5}).choose(None) == "rewrite+align"
    assert chooser({"control": 1}, helpers=HelpersSettings()).choose(None) == "control"


def test_ties_go_to_the_first_listed_arm() -> None:
    assert chooser({"rewrite": 1, "align": 1, "control": 1}).choose(None) == "rewrite"
    assert chooser({"align": 2, "rewrite": 2}).choose(None) == "align"


def test_the_default_experiment_is_control() -> None:
    assert ArmChooser(ExperimentSettings(), HelpersSettings()).choose(None) == "control"


@pytest.mark.parametrize("arm", ["control", "rewrite", "align", "rewrite+align"])
def test_the_header_picks_any_arm(arm: str) -> None:
    assert chooser({"control": 1}).choose(arm) == arm


def test_the_header_is_read_case_and_space_insensitively() -> None:
    c = chooser({"control": 1})
    assert c.choose(" Rewrite+Align ") == "rewrite+align"
    assert c.choose("ALIGN") == "align"


def test_allow_override_false_ignores_the_header() -> None:
    c = chooser({"control": 1, "align": 2}, allow_override=False)
    assert c.choose("control") == "align"
    assert c.choose("rewrite") == "align"
    assert c.choose("no-such-arm") == "align"  # not even checked: the header means nothing here


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
    assert c.choose("control") == "control"


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


async def test_the_response_names_the_arm_it_ran() -> None:
    rig = make_rig(arms={"control": 1, "align": 5})
    r = await post(rig.app, chat())
    assert r.status_code == 200
    assert r.headers["x-aligngate-arm"] == "align"
    assert r.json()["choices"][0]["message"]["content"].startswith("CORRECTED: ")
    r = await post(rig.app, chat(), {"X-Aligngate-Arm": "control"})
    assert r.headers["x-aligngate-arm"] == "control"
    assert r.json()["choices"][0]["message"]["content"] == "Answer 0: how to bake bread"


async def test_a_bad_arm_header_is_an_openai_shaped_400_and_reaches_no_backend() -> None:
    rig = make_rig(with_aligner=False)
    for header, code in (("bogus", "invalid_arm"), ("align", "arm_unavailable")):
        r = await post(rig.app, chat(), {"X-Aligngate-Arm": header})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, "X-Aligngate-Arm")
    assert rig.backend.requests == []


async def test_override_off_runs_the_default_whatever_the_header() -> None:
    rig = make_rig(arms={"rewrite": 1}, allow_override=False)
    r = await post(rig.app, chat(), {"X-Aligngate-Arm": "bogus"})
    assert r.status_code == 200
    assert r.headers["x-aligngate-arm"] == "rewrite"
    assert rig.backend.requests[0][1]["messages"][-1]["content"] != "how to bake bread"
