"""Properties of token expiry and of reading JWT claims."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from ohip_stream._auth import AccessToken, StaticToken
from ohip_stream._auth_tokens import jwt_claims as _jwt_claims

times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
lifetimes = st.floats(min_value=1e-3, max_value=1e7, allow_nan=False)
margins = st.floats(min_value=0, max_value=1e7, allow_nan=False)


@given(issued_at=times, lifetime=lifetimes, margin=margins)
def test_refresh_point_is_within_the_second_half_of_the_life(
    issued_at: float, lifetime: float, margin: float
) -> None:
    token = AccessToken(value="v" * 8, issued_at=issued_at, expires_at=issued_at + lifetime)
    refresh_at = token.refresh_at(margin)
    assert refresh_at is not None
    expires_at = issued_at + lifetime
    # Never after expiry, never before half the life, and exactly `margin` early when it fits.
    assert refresh_at <= expires_at
    assert refresh_at >= issued_at + lifetime / 2 - 1e-6 * max(1.0, expires_at)
    if margin <= lifetime / 2:
        assert abs((expires_at - refresh_at) - margin) <= 1e-6 * max(1.0, expires_at)


@given(st.text())
def test_reading_claims_never_raises(text: str) -> None:
    claims = _jwt_claims(text)
    assert claims is None or isinstance(claims, dict)


@given(
    claims=st.dictionaries(
        st.text(max_size=10),
        st.one_of(st.integers(), st.text(max_size=10), st.booleans(), st.none()),
        max_size=5,
    )
)
def test_claims_round_trip(claims: dict[str, object]) -> None:
    def part(data: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    token = f"{part({'alg': 'none'})}.{part(claims)}.sig"
    assert _jwt_claims(token) == claims


@given(st.text(min_size=1).filter(lambda s: s.strip() and s.strip().lower() != "bearer"))
def test_static_token_never_raises_on_any_value(value: str) -> None:
    try:
        provider = StaticToken(value, clock=lambda: 0.0)
    except ValueError:
        return  # only for values that are empty once the "Bearer" scheme is removed
    assert provider.margin == 0
