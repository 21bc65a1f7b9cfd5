"""The bounded map of recently used entries (core/recent.py) that holds feed pages' post
bodies and verified tokens: bounded, the recently read ones kept."""

from core.recent import Recent


def test_never_holds_more_than_its_size_and_keeps_what_is_read() -> None:
    held: Recent[int, bytes] = Recent(100)
    for post_id in range(1_000):
        held.put(post_id, b"%d" % post_id)
        if post_id >= 10:
            # A post read over and over (a popular one) is never evicted.
            assert held.get(7) == b"7"
        assert len(held) <= 100
    assert held.get(999) == b"999"
    assert held.get(0) is None  # long unread: gone
    assert len(held) >= 50  # one generation at least survives a turnover


def test_size_zero_holds_nothing() -> None:
    held: Recent[int, bytes] = Recent(0)
    held.put(1, b"{}")
    assert held.get(1) is None and len(held) == 0
