"""Unit tests of the token providers (protocol §8), with the token endpoint mocked by respx."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx

from ohip_stream import (
    AuthenticationError,
    CheckpointError,
    CheckpointUnavailableError,
    ConfigurationError,
    ConnectionRejectedError,
    ConsumerAlreadyRunningError,
    ConsumerConflictError,
    EventValidationError,
    ForbiddenError,
    MessageTooLargeError,
    OhipError,
    ProtocolError,
    RateLimitedError,
    SubscriptionError,
    TransportError,
)
from ohip_stream._auth import (
    DEFAULT_SCOPE,
    AccessToken,
    OAuthClientCredentials,
    OAuthOptions,
    OAuthPassword,
    StaticToken,
    TokenProvider,
)
from ohip_stream._logging import register_secret

GATEWAY = "https://gateway.example.com"
TOKEN_URL = f"{GATEWAY}/oauth/v1/tokens"
CLIENT_ID = "ohip_client_id"
CLIENT_SECRET = "s3cr3t-client-Secret-value"
APP_KEY = "a1b2c3d4-app-key-raw-value"
USERNAME = "integration_user"
PASSWORD = "p@ss&word=1 with space"
ENTERPRISE = "ENT1"
START = 1_700_000_000.0


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def make_jwt(**claims: Any) -> str:
    return f"{b64url({'alg': 'RS256', 'typ': 'JWT'})}.{b64url(claims)}.c2lnbmF0dXJl"


TOKEN_1 = make_jwt(sub="client", n=1)
TOKEN_2 = make_jwt(sub="client", n=2)
SECRETS = (CLIENT_SECRET, PASSWORD, APP_KEY, TOKEN_1, TOKEN_2)


def token_body(value: str = TOKEN_1, expires_in: Any = 3600, **extra: Any) -> dict[str, Any]:
    body = {"access_token": value, "token_type": "Bearer", "oracle_tk_context": "user_assertion"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    body.update(extra)
    return body


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
async def cc(clock: FakeClock, sleep: RecordingSleep) -> AsyncIterator[OAuthClientCredentials]:
    async with OAuthClientCredentials(
        gateway_url=GATEWAY,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        app_key=APP_KEY,
        enterprise_id=ENTERPRISE,
        clock=clock,
        sleep=sleep,
    ) as provider:
        yield provider


@pytest.fixture
async def pw(clock: FakeClock, sleep: RecordingSleep) -> AsyncIterator[OAuthPassword]:
    async with OAuthPassword(
        gateway_url=GATEWAY,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        app_key=APP_KEY,
        username=USERNAME,
        password=PASSWORD,
        clock=clock,
        sleep=sleep,
    ) as provider:
        yield provider


def cc_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "gateway_url": GATEWAY,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "app_key": APP_KEY,
        "enterprise_id": ENTERPRISE,
    }
    kwargs.update(overrides)
    return kwargs


def pw_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "gateway_url": GATEWAY,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "app_key": APP_KEY,
        "username": USERNAME,
        "password": PASSWORD,
    }
    kwargs.update(overrides)
    return kwargs


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert basic not in text


# --------------------------------------------------------------------------------------------
# The request (protocol §8)


async def test_client_credentials_request_is_exact(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    route = router.post(TOKEN_URL).respond(200, json=token_body())
    token = await cc.get_token()

    assert token.value == TOKEN_1
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == "/oauth/v1/tokens"
    expected_basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected_basic}"
    assert request.headers["x-app-key"] == APP_KEY
    assert request.headers["enterpriseId"] == ENTERPRISE
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode(), strict_parsing=True) == {
        "grant_type": ["client_credentials"],
        "scope": [DEFAULT_SCOPE],
    }


async def test_custom_scope_is_sent(router: respx.MockRouter) -> None:
    route = router.post(TOKEN_URL).respond(200, json=token_body())
    async with OAuthClientCredentials(**cc_kwargs(scope="urn:custom")) as provider:
        await provider.get_token()
    assert parse_qs(route.calls.last.request.content.decode())["scope"] == ["urn:custom"]


async def test_password_request_is_exact(router: respx.MockRouter, pw: OAuthPassword) -> None:
    route = router.post(TOKEN_URL).respond(200, json=token_body())
    await pw.get_token()

    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url.path == "/oauth/v1/tokens"
    expected_basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected_basic}"
    assert request.headers["x-app-key"] == APP_KEY
    assert "enterpriseId" not in request.headers
    # The password has '&', '=', '@' and a space: form encoding must keep it intact.
    assert parse_qs(request.content.decode(), strict_parsing=True) == {
        "grant_type": ["password"],
        "username": [USERNAME],
        "password": [PASSWORD],
    }
    assert pw.enterprise_id is None


@pytest.mark.parametrize(
    ("gateway_url", "expected"),
    [
        ("https://gateway.example.com/", TOKEN_URL),
        ("https://gateway.example.com", TOKEN_URL),
        (
            "https://gateway.example.com/prefix/",
            "https://gateway.example.com/prefix/oauth/v1/tokens",
        ),
        ("http://localhost:8080", "http://localhost:8080/oauth/v1/tokens"),
    ],
)
async def test_token_url_from_gateway_url(
    router: respx.MockRouter, gateway_url: str, expected: str
) -> None:
    route = router.post(expected).respond(200, json=token_body())
    async with OAuthClientCredentials(**cc_kwargs(gateway_url=gateway_url)) as provider:
        assert provider.token_url == expected
        await provider.get_token()
    assert route.call_count == 1


# --------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    "gateway_url", ["ftp://gateway.example.com", "gateway.example.com", "wss://g.example.com", ""]
)
def test_gateway_url_must_be_http(gateway_url: str) -> None:
    with pytest.raises(ConfigurationError, match="gateway_url"):
        OAuthClientCredentials(**cc_kwargs(gateway_url=gateway_url))


def test_gateway_url_with_credentials_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="gateway_url") as info:
        OAuthClientCredentials(**cc_kwargs(gateway_url=f"https://user:{CLIENT_SECRET}@g.example"))
    assert CLIENT_SECRET not in str(info.value)


@pytest.mark.parametrize("enterprise_id", ["ent1", "TOOLONG99", "ENT-1", "ENT 1", ""])
def test_enterprise_id_is_validated(enterprise_id: str) -> None:
    with pytest.raises(ConfigurationError, match="enterprise_id"):
        OAuthClientCredentials(**cc_kwargs(enterprise_id=enterprise_id))


def test_enterprise_id_error_states_the_rule() -> None:
    with pytest.raises(ConfigurationError, match=r"\^\[A-Z0-9\]\{1,8\}\$"):
        OAuthClientCredentials(**cc_kwargs(enterprise_id="lower"))


@pytest.mark.parametrize("enterprise_id", ["A", "ENT1", "12345678", "ABCD1234"])
def test_valid_enterprise_ids(enterprise_id: str) -> None:
    assert OAuthClientCredentials(**cc_kwargs(enterprise_id=enterprise_id)).enterprise_id == (
        enterprise_id
    )


@pytest.mark.parametrize(
    "name", ["gateway_url", "client_id", "client_secret", "app_key", "enterprise_id", "scope"]
)
@pytest.mark.parametrize("value", ["", "   ", None])
def test_client_credentials_required_arguments(name: str, value: str | None) -> None:
    with pytest.raises(ConfigurationError, match=name):
        OAuthClientCredentials(**cc_kwargs(**{name: value}))


@pytest.mark.parametrize(
    "name", ["gateway_url", "client_id", "client_secret", "app_key", "username", "password"]
)
def test_password_required_arguments(name: str) -> None:
    with pytest.raises(ConfigurationError, match=name):
        OAuthPassword(**pw_kwargs(**{name: ""}))


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"margin": -1}, "margin"),
        ({"margin": float("nan")}, "margin"),
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"timeout": 0}, "timeout"),
        ({"client_id": "has:colon"}, "client_id"),
        ({"verify": "/nonexistent/ca.pem"}, "verify"),
        ({"verify": 3}, "verify"),
    ],
)
def test_invalid_options(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        OAuthClientCredentials(**cc_kwargs(**overrides))


async def test_verify_and_proxy_conflict_with_http_client() -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(ConfigurationError, match="http_client"):
            OAuthClientCredentials(**cc_kwargs(http_client=client, verify=False))
        with pytest.raises(ConfigurationError, match="http_client"):
            OAuthClientCredentials(**cc_kwargs(http_client=client, proxy="http://proxy:3128"))


@pytest.mark.parametrize("gateway_url", ["https://gateway.example.com:notaport", "https://[::1"])
def test_gateway_url_must_parse(gateway_url: str) -> None:
    with pytest.raises(ConfigurationError, match="gateway_url"):
        OAuthClientCredentials(**cc_kwargs(gateway_url=gateway_url))


@pytest.mark.parametrize("proxy", ["ftp://proxy.example", "not a url at all"])
def test_proxy_is_validated(proxy: str) -> None:
    with pytest.raises(ConfigurationError, match="proxy"):
        OAuthClientCredentials(**cc_kwargs(proxy=proxy))


async def test_closed_http_client_is_a_configuration_error(router: respx.MockRouter) -> None:
    route = router.post(TOKEN_URL).respond(200, json=token_body())
    client = httpx.AsyncClient()
    await client.aclose()
    provider = OAuthClientCredentials(**cc_kwargs(http_client=client))
    with pytest.raises(ConfigurationError, match="http_client"):
        await provider.get_token()
    assert route.call_count == 0


def test_configuration_errors_are_ohip_errors_and_value_errors() -> None:
    with pytest.raises(ValueError, match="client_id"):
        OAuthClientCredentials(**cc_kwargs(client_id=""))


# --------------------------------------------------------------------------------------------
# Expiry (protocol §8: track expiry by expires_in and the JWT exp claim)


async def test_expiry_from_expires_in(
    router: respx.MockRouter, cc: OAuthClientCredentials, clock: FakeClock
) -> None:
    router.post(TOKEN_URL).respond(200, json=token_body("opaque-token-value", 3600))
    token = await cc.get_token()
    assert token.issued_at == START
    assert token.expires_at == START + 3600
    assert token.lifetime == 3600


async def test_expires_in_as_numeric_string(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    router.post(TOKEN_URL).respond(200, json=token_body("opaque-token-value", "1800"))
    assert (await cc.get_token()).expires_at == START + 1800


async def test_jwt_exp_earlier_than_expires_in_wins(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    value = make_jwt(exp=START + 1800)
    router.post(TOKEN_URL).respond(200, json=token_body(value, 3600))
    assert (await cc.get_token()).expires_at == START + 1800


async def test_expires_in_earlier_than_jwt_exp_wins(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    value = make_jwt(exp=START + 7200)
    router.post(TOKEN_URL).respond(200, json=token_body(value, 3600))
    assert (await cc.get_token()).expires_at == START + 3600


async def test_jwt_lifetime_by_iat_is_immune_to_clock_skew(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    # The server's clock is 2 hours ahead: exp is absolute in its time, but exp - iat is 600 s.
    server_now = START + 7200
    value = make_jwt(iat=server_now, exp=server_now + 600)
    router.post(TOKEN_URL).respond(200, json=token_body(value, 3600))
    assert (await cc.get_token()).expires_at == START + 600


async def test_jwt_exp_in_the_past_falls_back_to_expires_in(
    router: respx.MockRouter, cc: OAuthClientCredentials, caplog: pytest.LogCaptureFixture
) -> None:
    value = make_jwt(exp=START - 100)
    router.post(TOKEN_URL).respond(200, json=token_body(value, 3600))
    with caplog.at_level(logging.WARNING, logger="ohip_stream.auth"):
        token = await cc.get_token()
    assert token.expires_at == START + 3600
    assert any("clock" in r.getMessage() for r in caplog.records)


async def test_expiry_from_jwt_when_expires_in_is_absent(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    value = make_jwt(exp=START + 900)
    router.post(TOKEN_URL).respond(200, json=token_body(value, expires_in=None))
    assert (await cc.get_token()).expires_at == START + 900


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"token_type": "Bearer", "expires_in": 3600}, "access_token"),
        ({"access_token": "", "expires_in": 3600}, "access_token"),
        ({"access_token": 12345, "expires_in": 3600}, "access_token"),
        ({"access_token": "opaque-value"}, "expires_in"),
        ({"access_token": "opaque-value", "expires_in": "soon"}, "expires_in"),
        ({"access_token": "opaque-value", "expires_in": -5}, "expires_in"),
        ({"access_token": "opaque-value", "expires_in": True}, "expires_in"),
        ({"access_token": "opaque-value", "expires_in": 3600, "token_type": "MAC"}, "token_type"),
        (["not", "an", "object"], "not an object"),
    ],
)
async def test_malformed_success_body(
    router: respx.MockRouter, cc: OAuthClientCredentials, body: Any, match: str
) -> None:
    route = router.post(TOKEN_URL).respond(200, json=body)
    with pytest.raises(AuthenticationError, match=match):
        await cc.get_token()
    assert route.call_count == 1  # not retried: the server answered


async def test_success_body_not_json(router: respx.MockRouter, cc: OAuthClientCredentials) -> None:
    router.post(TOKEN_URL).respond(200, text="<html>gateway</html>")
    with pytest.raises(AuthenticationError, match="not JSON"):
        await cc.get_token()


# --------------------------------------------------------------------------------------------
# Reuse, margin, invalidate


async def test_token_reused_until_margin_before_expiry(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    route = router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(200, json=token_body(TOKEN_1, 3600)),
            httpx.Response(200, json=token_body(TOKEN_2, 3600)),
        ]
    )
    async with OAuthClientCredentials(**cc_kwargs(margin=300, clock=clock)) as provider:
        first = await provider.get_token()
        clock.advance(3299)
        assert await provider.get_token() is first
        assert route.call_count == 1
        clock.advance(1)  # now exactly 300 s before expiry
        second = await provider.get_token()
        assert second.value == TOKEN_2
        assert second.issued_at == START + 3300
        assert route.call_count == 2
        assert provider.margin == 300


async def test_margin_is_capped_at_half_the_lifetime(
    router: respx.MockRouter, clock: FakeClock
) -> None:
    route = router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(200, json=token_body(TOKEN_1, 120)),
            httpx.Response(200, json=token_body(TOKEN_2, 120)),
        ]
    )
    async with OAuthClientCredentials(**cc_kwargs(margin=300, clock=clock)) as provider:
        first = await provider.get_token()
        # A 300 s margin on a 120 s token would refresh on every call; the cap makes it 60 s.
        assert await provider.get_token() is first
        clock.advance(59)
        assert await provider.get_token() is first
        assert route.call_count == 1
        clock.advance(1)
        assert (await provider.get_token()).value == TOKEN_2
        assert route.call_count == 2


async def test_invalidate_current_token_fetches_a_new_one(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    route = router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(200, json=token_body(TOKEN_1)),
            httpx.Response(200, json=token_body(TOKEN_2)),
        ]
    )
    first = await cc.get_token()
    cc.invalidate(first)
    second = await cc.get_token()
    assert second.value == TOKEN_2
    assert route.call_count == 2


async def test_invalidate_stale_token_is_ignored(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    route = router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(200, json=token_body(TOKEN_1)),
            httpx.Response(200, json=token_body(TOKEN_2)),
            httpx.Response(200, json=token_body(make_jwt(n=3))),
        ]
    )
    first = await cc.get_token()
    cc.invalidate(first)
    second = await cc.get_token()
    # A second connection reports the old token as bad: the current one stays.
    cc.invalidate(first)
    assert await cc.get_token() is second
    assert route.call_count == 2


def test_invalidate_before_any_fetch_is_harmless(cc: OAuthClientCredentials) -> None:
    cc.invalidate(AccessToken(value="whatever", issued_at=0.0, expires_at=None))


# --------------------------------------------------------------------------------------------
# Single flight


async def test_concurrent_calls_make_one_request(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    release = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json=token_body())

    route = router.post(TOKEN_URL).mock(side_effect=slow)
    tasks = [asyncio.create_task(cc.get_token()) for _ in range(100)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    tokens = await asyncio.gather(*tasks)
    assert route.call_count == 1
    assert {t.value for t in tokens} == {TOKEN_1}
    assert all(t is tokens[0] for t in tokens)


async def test_concurrent_callers_share_a_failure(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    release = asyncio.Event()

    async def refuse(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(401, json={"error": "invalid_client"})

    route = router.post(TOKEN_URL).mock(side_effect=refuse)
    tasks = [asyncio.create_task(cc.get_token()) for _ in range(20)]
    for _ in range(5):
        await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, AuthenticationError) and r.status == 401 for r in results)
    # Wrong credentials are sent once, not once per caller.
    assert route.call_count == 1
    # A later call (not queued behind the failure) tries again.
    with pytest.raises(AuthenticationError):
        await cc.get_token()
    assert route.call_count == 2


async def test_cancelled_fetch_does_not_block_the_next_caller(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    started = asyncio.Event()
    never = asyncio.Event()
    responses = iter([None, httpx.Response(200, json=token_body())])
    requests: list[httpx.Request] = []

    async def effect(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        response = next(responses)
        if response is None:
            started.set()
            await never.wait()
            raise AssertionError("unreachable")
        return response

    router.post(TOKEN_URL).mock(side_effect=effect)
    first = asyncio.create_task(cc.get_token())
    second = asyncio.create_task(cc.get_token())
    await started.wait()
    first.cancel()
    token = await second
    assert token.value == TOKEN_1
    assert first.cancelled()
    assert len(requests) == 2


# --------------------------------------------------------------------------------------------
# Errors (protocol §8: 400, 401, 403)


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (401, "check the client id and secret"),
        (400, "check the grant type for this environment"),
        (403, "check the application key is registered"),
    ],
)
@pytest.mark.parametrize("grant", ["client_credentials", "password"])
async def test_refusals_are_not_retried_and_carry_no_secret(
    router: respx.MockRouter,
    clock: FakeClock,
    sleep: RecordingSleep,
    status: int,
    hint: str,
    grant: str,
) -> None:
    # The server echoes secrets in its description: the message must not.
    route = router.post(TOKEN_URL).respond(
        status,
        json={
            "error": "invalid_client",
            "error_description": f"bad {CLIENT_SECRET} / {PASSWORD} / {APP_KEY} / {TOKEN_1}",
        },
    )
    provider: OAuthClientCredentials | OAuthPassword
    if grant == "password":
        provider = OAuthPassword(**pw_kwargs(clock=clock, sleep=sleep))
    else:
        provider = OAuthClientCredentials(**cc_kwargs(clock=clock, sleep=sleep))
        # This provider never sees the password: it is a secret another part of the process
        # registered (redaction is process-wide).
        register_secret(PASSWORD)
    async with provider:
        with pytest.raises(AuthenticationError) as info:
            await provider.get_token()
    exc = info.value
    assert exc.status == status
    assert exc.error == "invalid_client"
    assert exc.error_description is not None
    assert exc.error_description.startswith("bad ")
    assert hint in str(exc)
    assert str(status) in str(exc)
    assert not exc.retriable
    assert route.call_count == 1
    assert sleep.calls == []
    for text in (str(exc), repr(exc), str(exc.error_description), repr(exc.args)):
        assert_no_secret(text)


async def test_refusal_without_json_body(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    router.post(TOKEN_URL).respond(401, text="Unauthorized")
    with pytest.raises(AuthenticationError, match="HTTP 401") as info:
        await cc.get_token()
    assert info.value.error is None
    assert info.value.error_description is None


async def test_not_found_points_at_the_gateway_url(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    router.post(TOKEN_URL).respond(404)
    with pytest.raises(AuthenticationError, match="gateway_url") as info:
        await cc.get_token()
    assert info.value.status == 404


async def test_server_errors_are_retried_then_succeed(
    router: respx.MockRouter, cc: OAuthClientCredentials, sleep: RecordingSleep
) -> None:
    route = router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(503),
            httpx.Response(200, json=token_body()),
        ]
    )
    token = await cc.get_token()
    assert token.value == TOKEN_1
    assert route.call_count == 3
    assert len(sleep.calls) == 2
    assert all(0 <= s <= 10 for s in sleep.calls)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
async def test_persistent_server_error_is_a_transport_error_with_the_status(
    router: respx.MockRouter, clock: FakeClock, sleep: RecordingSleep, status: int
) -> None:
    route = router.post(TOKEN_URL).respond(
        status, json={"error": "temporarily_unavailable", "error_description": CLIENT_SECRET}
    )
    async with OAuthClientCredentials(**cc_kwargs(retries=2, clock=clock, sleep=sleep)) as p:
        with pytest.raises(TransportError, match=f"HTTP {status}") as info:
            await p.get_token()
    assert type(info.value) is TransportError
    assert info.value.status == status
    assert info.value.retriable
    assert "attempt 3 of 3" in str(info.value)
    assert_no_secret(str(info.value))
    assert route.call_count == 3
    assert len(sleep.calls) == 2


async def test_rate_limited_is_retried(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    route = router.post(TOKEN_URL).mock(
        side_effect=[httpx.Response(429), httpx.Response(200, json=token_body())]
    )
    assert (await cc.get_token()).value == TOKEN_1
    assert route.call_count == 2


async def test_network_error_exhausted_is_a_transport_error(
    router: respx.MockRouter, cc: OAuthClientCredentials, sleep: RecordingSleep
) -> None:
    route = router.post(TOKEN_URL).mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(TransportError, match=r"gateway\.example\.com") as info:
        await cc.get_token()
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.retriable
    assert route.call_count == 4  # retries=3: one attempt and three more
    assert len(sleep.calls) == 3


async def test_retries_zero_is_a_single_attempt(
    router: respx.MockRouter, clock: FakeClock, sleep: RecordingSleep
) -> None:
    route = router.post(TOKEN_URL).mock(side_effect=httpx.ConnectError("refused"))
    async with OAuthClientCredentials(**cc_kwargs(retries=0, clock=clock, sleep=sleep)) as p:
        with pytest.raises(TransportError):
            await p.get_token()
    assert route.call_count == 1
    assert sleep.calls == []


async def test_timeout_then_success(
    router: respx.MockRouter, cc: OAuthClientCredentials, sleep: RecordingSleep
) -> None:
    route = router.post(TOKEN_URL).mock(
        side_effect=[httpx.ReadTimeout("timed out"), httpx.Response(200, json=token_body())]
    )
    assert (await cc.get_token()).value == TOKEN_1
    assert route.call_count == 2
    assert len(sleep.calls) == 1


async def test_untrusted_certificate_is_a_configuration_error(
    router: respx.MockRouter, cc: OAuthClientCredentials, sleep: RecordingSleep
) -> None:
    # What httpx raises when the handshake fails verification.
    error = httpx.ConnectError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: "
        "self-signed certificate in certificate chain (_ssl.c:1006)"
    )
    route = router.post(TOKEN_URL).mock(side_effect=error)
    with pytest.raises(ConfigurationError, match="not trusted") as info:
        await cc.get_token()
    assert "verify=" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert route.call_count == 1
    assert sleep.calls == []


async def test_undecodable_response_is_a_transport_error(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    router.post(TOKEN_URL).mock(side_effect=httpx.DecodingError("bad gzip"))
    with pytest.raises(TransportError, match="DecodingError"):
        await cc.get_token()


async def test_no_library_error_escapes_unmapped(
    router: respx.MockRouter, cc: OAuthClientCredentials
) -> None:
    router.post(TOKEN_URL).mock(side_effect=httpx.RemoteProtocolError("peer closed"))
    with pytest.raises(OhipError):
        await cc.get_token()


# --------------------------------------------------------------------------------------------
# The HTTP client


async def test_caller_http_client_is_used_and_not_closed(router: respx.MockRouter) -> None:
    route = router.post(TOKEN_URL).respond(200, json=token_body())
    async with httpx.AsyncClient() as client:
        provider = OAuthClientCredentials(**cc_kwargs(http_client=client))
        async with provider:
            await provider.get_token()
        await provider.aclose()
        assert not client.is_closed
        assert route.call_count == 1
        # Still usable by its owner.
        assert (await client.post(TOKEN_URL)).status_code == 200
    assert client.is_closed


async def test_a_client_per_fetch_closed_when_the_fetch_ends(
    router: respx.MockRouter, clock: FakeClock, sleep: RecordingSleep
) -> None:
    # The provider holds nothing between fetches: one never closed leaves nothing open.
    router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(503),
            httpx.Response(200, json=token_body(TOKEN_1)),
            httpx.Response(200, json=token_body(TOKEN_2)),
        ]
    )
    made: list[httpx.AsyncClient] = []
    original = httpx.AsyncClient

    class CountingClient(original):  # type: ignore[valid-type,misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    provider = OAuthClientCredentials(**cc_kwargs(clock=clock, sleep=sleep))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(httpx, "AsyncClient", CountingClient)
        assert made == []  # nothing made at construction
        first = await provider.get_token()
        assert len(made) == 1  # the retry after the 503 used the same client
        assert made[0].is_closed
        assert await provider.get_token() is first  # reused: no client made
        assert len(made) == 1
        provider.invalidate(first)
        await provider.get_token()
        assert len(made) == 2
        assert made[1].is_closed
        await provider.aclose()
        await provider.aclose()  # idempotent
        assert (await provider.get_token()).value == TOKEN_2  # usable after aclose


async def test_a_failed_or_cancelled_fetch_closes_its_client(
    router: respx.MockRouter, clock: FakeClock, sleep: RecordingSleep
) -> None:
    made: list[httpx.AsyncClient] = []
    original = httpx.AsyncClient

    class CountingClient(original):  # type: ignore[valid-type,misc]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

    answered = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        answered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    provider = OAuthClientCredentials(**cc_kwargs(clock=clock, sleep=sleep, retries=0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(httpx, "AsyncClient", CountingClient)
        router.post(TOKEN_URL).respond(401)
        with pytest.raises(AuthenticationError):
            await provider.get_token()
        assert made[-1].is_closed
        router.post(TOKEN_URL).mock(side_effect=hang)
        task = asyncio.create_task(provider.get_token())
        await answered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert len(made) == 2
        assert made[-1].is_closed


async def test_client_gets_timeout_verify_and_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    original = httpx.AsyncClient

    class RecordingClient(original):  # type: ignore[valid-type,misc]
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", RecordingClient)
    context = ssl.create_default_context()
    with respx.mock(assert_all_mocked=True) as mock:
        mock.post(TOKEN_URL).respond(200, json=token_body())
        async with OAuthClientCredentials(
            **cc_kwargs(verify=context, proxy="http://proxy.example:3128", timeout=3.5)
        ) as provider:
            await provider.get_token()
    assert seen["verify"] is context
    assert seen["proxy"] == "http://proxy.example:3128"
    assert seen["timeout"] == httpx.Timeout(3.5)
    assert seen["follow_redirects"] is False


async def test_verify_accepts_a_ca_file(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    seen: list[Any] = []
    original = httpx.AsyncClient

    class RecordingClient(original):  # type: ignore[valid-type,misc]
        def __init__(self, **kwargs: Any) -> None:
            seen.append(kwargs["verify"])
            super().__init__(**kwargs)

    monkeypatch.setattr(httpx, "AsyncClient", RecordingClient)
    with respx.mock(assert_all_mocked=True) as mock:
        mock.post(TOKEN_URL).respond(200, json=token_body())
        for verify in (str(path), path):
            await OAuthClientCredentials(**cc_kwargs(verify=verify)).get_token()
    assert len(seen) == 2
    assert all(isinstance(context, ssl.SSLContext) for context in seen)


# --------------------------------------------------------------------------------------------
# Secrets: reprs and logs


async def test_reprs_show_no_secret(router: respx.MockRouter, pw: OAuthPassword) -> None:
    router.post(TOKEN_URL).respond(200, json=token_body())
    cc = OAuthClientCredentials(**cc_kwargs())
    token = await pw.get_token()
    for text in (repr(cc), str(cc), repr(pw), str(pw), repr(vars(cc)), repr(vars(pw))):
        assert_no_secret(text)
    assert repr(cc) == (
        "OAuthClientCredentials(gateway='gateway.example.com', client_id='ohip_client_id', "
        "grant='client_credentials')"
    )
    assert "grant='password'" in repr(pw)
    assert_no_secret(repr(token))
    assert_no_secret(str(token))
    assert "[REDACTED]" in repr(token)


async def test_no_secret_in_any_log_record(
    router: respx.MockRouter, caplog: pytest.LogCaptureFixture, clock: FakeClock
) -> None:
    sleep = RecordingSleep()
    router.post(TOKEN_URL).mock(
        side_effect=[
            httpx.ConnectError(f"refused {CLIENT_SECRET}"),
            httpx.Response(503),
            httpx.Response(200, json=token_body(TOKEN_1)),
            httpx.Response(401, json={"error": "invalid_client", "error_description": PASSWORD}),
        ]
    )
    caplog.set_level(logging.DEBUG)
    async with OAuthPassword(**pw_kwargs(clock=clock, sleep=sleep)) as provider:
        token = await provider.get_token()
        provider.invalidate(token)
        with pytest.raises(AuthenticationError):
            await provider.get_token()
    router.post(TOKEN_URL).mock(side_effect=httpx.ConnectError(f"refused {PASSWORD}"))
    async with OAuthPassword(**pw_kwargs(clock=clock, sleep=sleep, retries=0)) as provider:
        try:
            await provider.get_token()
        except TransportError:
            logging.getLogger("ohip_stream.auth").exception("token failure")
        else:
            raise AssertionError("expected a TransportError")

    messages = [r.getMessage() for r in caplog.records]
    assert any(r.name == "httpx" for r in caplog.records)  # httpx's own records are checked
    assert any("token fetched (expires in 3600 s)" in m for m in messages)
    assert any("retrying" in m for m in messages)
    for record in caplog.records:
        assert_no_secret(record.getMessage())
        assert_no_secret(record.exc_text or "")
    assert any(r.exc_text and "[REDACTED]" in r.exc_text for r in caplog.records)
    assert_no_secret(caplog.text)


async def test_proxy_password_is_registered_as_a_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy_password = "proxy-pa55word-value"
    OAuthClientCredentials(**cc_kwargs(proxy=f"http://user:{proxy_password}@proxy.example:3128"))
    caplog.set_level(logging.DEBUG)
    logging.getLogger("httpx").debug("connecting through proxy with %s", proxy_password)
    assert proxy_password not in caplog.text


# --------------------------------------------------------------------------------------------
# AccessToken


def test_access_token_helpers() -> None:
    token = AccessToken(value="v" * 10, issued_at=100.0, expires_at=3700.0)
    assert token.lifetime == 3600
    assert token.expires_in(700.0) == 3000
    assert token.expires_in(4000.0) == -300
    assert not token.is_expired(3699.9)
    assert token.is_expired(3700.0)
    assert token.refresh_at(300) == 3400
    assert token.refresh_at(5000) == 1900  # capped at half the lifetime
    assert token.refresh_at(0) == 3700
    forever = AccessToken(value="v" * 10, issued_at=100.0)
    assert forever.expires_at is None
    assert forever.lifetime is None
    assert forever.expires_in(1e12) is None
    assert forever.refresh_at(300) is None
    assert not forever.is_expired(1e12)


def test_access_token_is_frozen_and_redacted() -> None:
    token = AccessToken(value=TOKEN_1, issued_at=1.0, expires_at=2.0)
    with pytest.raises(AttributeError):
        token.value = "other"  # type: ignore[misc]
    assert repr(token) == "AccessToken(value=[REDACTED], issued_at=1.0, expires_at=2.0)"
    assert str(token) == repr(token)
    assert not hasattr(token, "__dict__")  # slots


# --------------------------------------------------------------------------------------------
# StaticToken


async def test_static_jwt_token(clock: FakeClock) -> None:
    value = make_jwt(iat=START - 60, exp=START + 600)
    provider = StaticToken(value, enterprise_id="ENT1", clock=clock)
    token = await provider.get_token()
    assert token.value == value
    assert token.issued_at == START - 60
    assert token.expires_at == START + 600
    assert provider.margin == 0
    assert provider.enterprise_id == "ENT1"
    provider.invalidate(token)
    assert await provider.get_token() is token
    clock.advance(600)
    with pytest.raises(AuthenticationError, match="expired"):
        await provider.get_token()
    await provider.aclose()
    await provider.aclose()


async def test_static_jwt_without_iat_is_issued_now(clock: FakeClock) -> None:
    token = await StaticToken(make_jwt(exp=START + 100), clock=clock).get_token()
    assert token.issued_at == START
    assert token.expires_at == START + 100


async def test_static_opaque_token_never_expires(clock: FakeClock) -> None:
    async with StaticToken("opaque-token-value", clock=clock) as provider:
        token = await provider.get_token()
        assert token.value == "opaque-token-value"
        assert token.issued_at == START
        assert token.expires_at is None
        clock.advance(10**9)
        assert await provider.get_token() is token
        assert provider.enterprise_id is None


@pytest.mark.parametrize("value", ["not.a.jwt", "a.!!!.c", f"x.{b64url({'exp': 'soon'})}.y"])
async def test_static_token_with_unreadable_claims_never_expires(value: str) -> None:
    token = await StaticToken(value).get_token()
    assert token.expires_at is None


async def test_static_token_strips_bearer_prefix() -> None:
    token = await StaticToken(f"Bearer {TOKEN_1}").get_token()
    assert token.value == TOKEN_1


@pytest.mark.parametrize("value", ["", "   ", "Bearer "])
def test_static_token_must_not_be_empty(value: str) -> None:
    with pytest.raises(ConfigurationError, match="token"):
        StaticToken(value)


def test_static_token_validates_enterprise_id() -> None:
    with pytest.raises(ConfigurationError, match="enterprise_id"):
        StaticToken("opaque-token-value", enterprise_id="bad id")


def test_static_token_repr_has_no_value() -> None:
    provider = StaticToken(TOKEN_1)
    assert TOKEN_1 not in repr(provider)
    assert TOKEN_1 not in repr(vars(provider))


# --------------------------------------------------------------------------------------------
# The protocol


def test_every_provider_is_a_token_provider() -> None:
    providers: list[object] = [
        OAuthClientCredentials(**cc_kwargs()),
        OAuthPassword(**pw_kwargs()),
        StaticToken("opaque-token-value"),
    ]
    for provider in providers:
        assert isinstance(provider, TokenProvider)
    assert not isinstance(object(), TokenProvider)


# --------------------------------------------------------------------------------------------
# One options type for both grants


# Every keyword argument of the two constructors before they shared one options type.
_SHARED_ARGUMENTS: dict[str, Any] = {
    "margin": 120.0,
    "http_client": None,
    "verify": True,
    "proxy": None,
    "timeout": httpx.Timeout(5.0),
    "retries": 1,
    "clock": FakeClock(),
    "sleep": RecordingSleep(),
    "allow_insecure": False,
}


async def test_every_argument_of_both_constructors_is_still_taken(
    router: respx.MockRouter,
) -> None:
    route = router.post(TOKEN_URL).respond(200, json=token_body())
    cc = OAuthClientCredentials(**cc_kwargs(scope=DEFAULT_SCOPE, **_SHARED_ARGUMENTS))
    pw = OAuthPassword(**pw_kwargs(**_SHARED_ARGUMENTS))
    for provider in (cc, pw):
        await provider.get_token()
        assert provider.margin == 120.0
    assert route.call_count == 2


@pytest.mark.parametrize(
    ("factory", "name"),
    [
        (lambda: OAuthClientCredentials(**cc_kwargs(retires=3)), "'retires'"),
        (lambda: OAuthPassword(**pw_kwargs(enterprise_id="ENT1")), "'enterprise_id'"),
        (lambda: OAuthClientCredentials(**cc_kwargs(username="u")), "'username'"),
    ],
)
def test_an_unknown_argument_is_named(factory: Any, name: str) -> None:
    with pytest.raises(TypeError, match=f"unexpected keyword argument {name}") as info:
        factory()
    assert "gateway_url" in str(info.value)  # and the options it takes are listed


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"deadline": 0}, "deadline"),
        ({"deadline": "soon"}, "deadline"),
        ({"max_response_size": 0}, "max_response_size"),
        ({"max_response_size": 1.5}, "max_response_size"),
        ({"max_response_size": True}, "max_response_size"),
        ({"clock": 3}, "clock"),
        ({"http_client": "client"}, "http_client"),
    ],
)
def test_invalid_limits_are_named(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        OAuthPassword(**pw_kwargs(**overrides))


def test_the_limits_can_be_turned_off() -> None:
    OAuthClientCredentials(**cc_kwargs(deadline=None, max_response_size=None))


def test_the_reference_shows_no_private_base_and_every_parameter() -> None:
    # The two OAuth providers share a private base (one copy of their common members): the
    # reference page hides bases and shows inherited members as the classes' own.
    page = (Path(__file__).parents[1] / "docs" / "reference" / "api" / "auth.md").read_text()
    for name in ("OAuthClientCredentials", "OAuthPassword"):
        block = page[page.index(f"::: ohip_stream.{name}") :]
        options = block[: block.index(":::", 3) if block.count(":::") > 1 else len(block)]
        assert "show_bases: false" in options
        assert "inherited_members: true" in options
    for cls in (OAuthClientCredentials, OAuthPassword, StaticToken):
        # The reference renders the class docstring: every parameter is documented there.
        doc = cls.__doc__ or ""
        for name in inspect.signature(cls).parameters:
            if name != "options":
                assert re.search(rf"^ +{name}( \(.+\))?: ", doc, re.M), (cls.__name__, name)
    for cls in (OAuthClientCredentials, OAuthPassword):
        doc = cls.__doc__ or ""
        for name in OAuthOptions.__annotations__:
            # The shared options are not in the signature: their types are in the docstring.
            assert re.search(rf"^ +{name} \(.+\): ", doc, re.M), (cls.__name__, name)


# --------------------------------------------------------------------------------------------
# The answer's size


async def test_a_token_answer_above_the_cap_is_refused_naming_the_limit(
    router: respx.MockRouter, clock: FakeClock, sleep: RecordingSleep
) -> None:
    big = token_body(padding="x" * 5000)
    route = router.post(TOKEN_URL).respond(200, json=big)
    async with OAuthClientCredentials(
        **cc_kwargs(clock=clock, sleep=sleep, max_response_size=4096)
    ) as provider:
        with pytest.raises(AuthenticationError, match="max_response_size=4096") as info:
            await provider.get_token()
    assert info.value.status == 200
    assert route.call_count == 1  # not retried: the endpoint is not a token endpoint
    assert sleep.calls == []


async def test_an_error_answer_above_the_cap_keeps_its_status(
    router: respx.MockRouter, clock: FakeClock, sleep: RecordingSleep
) -> None:
    router.post(TOKEN_URL).respond(401, json={"error": "invalid_client", "pad": "x" * 5000})
    async with OAuthClientCredentials(
        **cc_kwargs(clock=clock, sleep=sleep, max_response_size=4096)
    ) as provider:
        with pytest.raises(AuthenticationError, match="HTTP 401") as info:
            await provider.get_token()
    assert info.value.status == 401
    assert info.value.error is None  # the body was not read past the cap


# --------------------------------------------------------------------------------------------
# A proxy's password (hardening issue, item 4)


PROXY_PASSWORD = "pr0xy-Passw0rd-value"


@pytest.mark.parametrize(
    "proxy",
    [
        f"http://proxyuser:{PROXY_PASSWORD}@proxy.example:3128",
        httpx.URL(f"http://proxyuser:{PROXY_PASSWORD}@proxy.example:3128"),
        httpx.Proxy(f"http://proxyuser:{PROXY_PASSWORD}@proxy.example:3128"),
    ],
)
async def test_the_proxy_password_is_in_no_repr_message_or_log(
    router: respx.MockRouter,
    caplog: pytest.LogCaptureFixture,
    sleep: RecordingSleep,
    proxy: Any,
) -> None:
    # httpx's own message names the proxy URL it failed on, password included.
    router.post(TOKEN_URL).mock(
        side_effect=httpx.ProxyError(f"cannot reach http://proxyuser:{PROXY_PASSWORD}@proxy")
    )
    caplog.set_level(logging.DEBUG)
    provider = OAuthPassword(**pw_kwargs(proxy=proxy, sleep=sleep, retries=1))
    with pytest.raises(TransportError) as info:
        await provider.get_token()
    shown = (repr(provider), str(info.value), repr(info.value), caplog.text)
    for text in shown:
        assert PROXY_PASSWORD not in text
    assert "proxy='http://proxy.example:3128'" in repr(provider)
    assert "through the proxy http://proxy.example:3128" in str(info.value)
    assert "retrying" in caplog.text


@pytest.mark.parametrize(
    "proxy",
    [
        f"ftp://proxyuser:{PROXY_PASSWORD}@proxy.example:21",
        f"http://proxyuser:{PROXY_PASSWORD}@proxy.example:port",
    ],
)
def test_a_refused_proxy_url_does_not_show_its_password(
    proxy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConfigurationError, match="proxy") as info:
        OAuthClientCredentials(**cc_kwargs(proxy=proxy))
    # What an application (or the CLI) logs about it, through the library's loggers.
    logging.getLogger("ohip_stream.auth").error("cannot start: %s (%s)", info.value, proxy)
    assert PROXY_PASSWORD not in str(info.value)
    assert PROXY_PASSWORD not in caplog.text


def test_a_percent_encoded_proxy_password_is_hidden_both_ways(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = "http://proxyuser:pr0xy%40Pass%3Aw0rd@proxy.example:3128"
    provider = OAuthClientCredentials(**cc_kwargs(proxy=proxy))
    logging.getLogger("ohip_stream.auth").debug("%r via %s (pr0xy@Pass:w0rd)", provider, proxy)
    for password in ("pr0xy@Pass:w0rd", "pr0xy%40Pass%3Aw0rd"):
        assert password not in repr(provider)
        assert password not in caplog.text


# --------------------------------------------------------------------------------------------
# Renewal


def test_only_the_oauth_providers_can_renew() -> None:
    assert OAuthClientCredentials(**cc_kwargs()).renewable is True
    assert OAuthPassword(**pw_kwargs()).renewable is True
    assert StaticToken("opaque-token-value").renewable is False


def test_a_provider_without_renewable_is_a_token_provider() -> None:
    class Vault:
        enterprise_id = None
        margin = 60.0

        async def get_token(self) -> AccessToken:
            return AccessToken(value="from-the-vault", issued_at=0.0)

        def invalidate(self, token: AccessToken) -> None:
            pass

        async def aclose(self) -> None:
            pass

    vault = Vault()
    assert isinstance(vault, TokenProvider)
    assert getattr(vault, "renewable", True) is True  # what the stream reads


# --------------------------------------------------------------------------------------------
# The error tree


def _every_error() -> list[OhipError]:
    return [
        OhipError("x"),
        ConfigurationError("x"),
        AuthenticationError("x", status=401, error="invalid_client"),
        AuthenticationError("x", code=4401),
        ConnectionRejectedError("x", status=400),
        RateLimitedError("x", retry_after=120.0),
        SubscriptionError("x", code=4400, reason="bad chain"),
        ForbiddenError("x", code=4403),
        ConsumerConflictError("x", code=4409),
        ConsumerAlreadyRunningError("x"),
        ProtocolError("x"),
        MessageTooLargeError("x", code=1009),
        EventValidationError("x", raw="{}"),
        CheckpointError("x"),
        CheckpointUnavailableError("x"),
        TransportError("x", status=503),
        TransportError("x"),
    ]


def test_retriable_is_a_class_attribute_only() -> None:
    expected = {
        RateLimitedError: True,
        TransportError: True,
        CheckpointUnavailableError: True,
        ProtocolError: False,
        MessageTooLargeError: False,
        AuthenticationError: False,
        ConnectionRejectedError: False,
        ConfigurationError: False,
    }
    for error in _every_error():
        assert "retriable" not in vars(error), type(error).__name__
        assert error.retriable is type(error).retriable
        if type(error) in expected:
            assert error.retriable is expected[type(error)], type(error).__name__


def test_status_is_http_and_code_is_a_close_code() -> None:
    refused = AuthenticationError("refused", status=401, error="e", error_description="d")
    assert (refused.status, refused.code) == (401, None)
    twice = AuthenticationError("4401 twice", code=4401)
    assert (twice.status, twice.code) == (None, 4401)
    assert ConnectionRejectedError("x", status=400).status == 400
    with pytest.raises(TypeError):
        ConnectionRejectedError("x")  # type: ignore[call-arg]
    limited = RateLimitedError("x", retry_after=30.0)
    assert (limited.status, limited.retry_after) == (429, 30.0)
    assert TransportError("down", status=503).status == 503
    assert TransportError("refused").status is None
    closed = SubscriptionError("x", code=4400, reason="bad chain")
    assert (closed.code, closed.reason) == (4400, "bad chain")
    for error in _every_error():
        status = getattr(error, "status", None)
        code = getattr(error, "code", None)
        assert status is None or 100 <= status <= 599, type(error).__name__
        assert code is None or 1000 <= code <= 4999, type(error).__name__
