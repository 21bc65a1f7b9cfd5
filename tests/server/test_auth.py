import pytest

from core import auth
from core.auth import TokenError, TokenSigner

SIGNER = TokenSigner("a-test-secret-of-some-length", ttl_seconds=3600)


def test_issued_token_verifies_to_its_user() -> None:
    token = SIGNER.issue(2**62 + 5, now=1000)
    claims = SIGNER.verify(token, now=1001)
    assert claims.user_id == 2**62 + 5
    assert claims.expires_at == 4600


def test_expired_token_is_refused() -> None:
    token = SIGNER.issue(1, now=1000)
    with pytest.raises(TokenError) as info:
        SIGNER.verify(token, now=4600)
    assert info.value.code == "token_expired"


def test_token_from_another_secret_is_refused() -> None:
    other = TokenSigner("another-secret-entirely!", ttl_seconds=3600).issue(1)
    with pytest.raises(TokenError, match="signature"):
        SIGNER.verify(other)


def test_tampered_claims_are_refused() -> None:
    token = SIGNER.issue(1)
    payload, signature = token.split(".")
    forged = SIGNER.issue(2).split(".")[0]
    with pytest.raises(TokenError):
        SIGNER.verify(f"{forged}.{signature}")
    with pytest.raises(TokenError):
        SIGNER.verify(f"{payload}.{signature[:-2]}")


@pytest.mark.parametrize(
    "garbage", ["", ".", "a.b.c", "x" * 600, "not base64!.@@@", "é.é", "\x00.\x00"]
)
def test_garbage_is_refused_cleanly(garbage: str) -> None:
    with pytest.raises(TokenError) as info:
        SIGNER.verify(garbage)
    assert info.value.code == "invalid_token"


def test_a_verified_token_still_expires_and_the_cache_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auth, "VERIFIED_MAX", 100)
    signer = TokenSigner("a-test-secret-of-some-length", ttl_seconds=3600)
    token = signer.issue(7, now=1000)
    assert signer.verify(token, now=1001).user_id == 7  # verified, then remembered
    assert signer.verify(token, now=4599).user_id == 7
    with pytest.raises(TokenError) as info:
        signer.verify(token, now=4600)
    assert info.value.code == "token_expired"
    forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    with pytest.raises(TokenError, match="signature"):
        signer.verify(forged, now=1001)  # a near copy is not the remembered token
    busy = signer.issue(1, now=1000)  # a client that reads its feed all the time
    for user in range(2, 1_000):  # ids are positive
        signer.verify(signer.issue(user, now=1000), now=1001)
        signer.verify(busy, now=1001)
        assert len(signer._verified) <= 100
    assert signer._verified.get(busy) is not None  # never dropped by the turnover
