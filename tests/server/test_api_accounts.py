import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from core.auth import TokenSigner
from core.settings import Settings
from tests.support.api import error_of, new_handle, sign_up

Client = TestClient[web.Request, web.Application]


async def test_sign_up_then_sign_in_case_insensitively(api: Client) -> None:
    handle = new_handle("Mixed")
    user = await sign_up(api, handle)
    assert user.handle == handle and user.id.isdigit()
    resp = await api.post(
        "/v1/sessions", json={"handle": handle.upper(), "password": "correct horse"}
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["user_id"] == user.id and body["token"]


async def test_handle_is_unique_case_insensitively(api: Client) -> None:
    handle = new_handle("dup")
    await sign_up(api, handle)
    resp = await api.post("/v1/users", json={"handle": handle.upper(), "password": "whatever123"})
    assert resp.status == 409
    assert await error_of(resp) == {
        "code": "handle_taken",
        "message": "that handle is already taken",
        "field": "handle",
    }


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"handle": "a b", "password": "longenough"}, 422, "invalid_handle", "handle"),
        ({"handle": "x" * 16, "password": "longenough"}, 422, "invalid_handle", "handle"),
        ({"handle": "émile", "password": "longenough"}, 422, "invalid_handle", "handle"),
        ({"handle": "", "password": "longenough"}, 422, "invalid_handle", "handle"),
        ({"handle": 12, "password": "longenough"}, 422, "invalid_field", "handle"),
        ({"password": "longenough"}, 422, "missing_field", "handle"),
        ({"handle": "okname", "password": "short"}, 422, "invalid_password", "password"),
        ({"handle": "okname", "password": ["list"]}, 422, "invalid_field", "password"),
        (
            {"handle": "okname", "password": "longenough", "admin": True},
            422,
            "unknown_field",
            "admin",
        ),
        (
            {"handle": "okname", "password": "longenough", "display_name": "a\x00b"},
            422,
            "invalid_characters",
            "display_name",
        ),
    ],
)
async def test_sign_up_refuses_bad_input(
    api: Client, body: dict[str, object], status: int, code: str, field: str
) -> None:
    resp = await api.post("/v1/users", json=body)
    assert resp.status == status
    error = await error_of(resp)
    assert (error["code"], error.get("field")) == (code, field)


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1,2]", 422, "invalid_body"),
        (b'"just a string"', 422, "invalid_body"),
        (b'{"handle": "\xff\xfe"}', 400, "invalid_json"),
        (b'{"handle": "' + b"a" * 20_000 + b'"}', 413, "body_too_large"),
    ],
)
async def test_malformed_bodies_get_4xx(api: Client, raw: bytes, status: int, code: str) -> None:
    resp = await api.post("/v1/users", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == status
    assert (await error_of(resp))["code"] == code


async def test_wrong_password_and_unknown_handle_look_the_same(api: Client) -> None:
    user = await sign_up(api)
    wrong = await api.post("/v1/sessions", json={"handle": user.handle, "password": "nope-nope"})
    unknown = await api.post("/v1/sessions", json={"handle": "nobody_here_x", "password": "x"})
    assert wrong.status == unknown.status == 401
    assert await error_of(wrong) == await error_of(unknown)


async def test_endpoints_require_a_valid_token(api: Client, settings: Settings) -> None:
    user = await sign_up(api)
    forged = TokenSigner("some-other-secret-key!!", 3600).issue(int(user.id))
    expired = TokenSigner(settings.secret_key, 3600).issue(int(user.id), now=1_000_000)
    cases = {
        None: "unauthorized",
        "Bearer ": "invalid_token",
        "Basic abc": "invalid_token",
        f"Bearer {forged}": "invalid_token",
        f"Bearer {expired}": "token_expired",
        f"Bearer {user.token}x": "invalid_token",
        "Bearer " + "a" * 2000: "invalid_token",
    }
    for header, code in cases.items():
        headers = {} if header is None else {"Authorization": header}
        resp = await api.get("/v1/feed", headers=headers)
        assert resp.status == 401, header
        assert (await error_of(resp))["code"] == code, header
    ok = await api.get("/v1/feed", headers=user.auth)
    assert ok.status == 200


async def test_unknown_route_and_method_are_json_errors(api: Client) -> None:
    user = await sign_up(api)
    resp = await api.get("/v1/nothing-here", headers=user.auth)
    assert resp.status == 404 and (await error_of(resp))["code"] == "not_found"
    resp = await api.put("/v1/posts", headers=user.auth)
    assert resp.status == 405 and (await error_of(resp))["code"] == "method_not_allowed"


async def test_a_longest_password_with_anything_appended_does_not_sign_in(api: Client) -> None:
    password = "🔑" + "p" * 127  # 128 code points: the longest sign-up accepts
    user = await sign_up(api, password=password)
    ok = await api.post("/v1/sessions", json={"handle": user.handle, "password": password})
    assert ok.status == 200
    for longer in (password + "x", password + "anything at all"):
        resp = await api.post("/v1/sessions", json={"handle": user.handle, "password": longer})
        assert resp.status == 401
        assert (await error_of(resp))["code"] == "invalid_credentials"
