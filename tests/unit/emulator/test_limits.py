import pytest

from bridge.emulator.limits import ConcurrencyLimiter, Quota, RateLimiter, SlidingWindow


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_window_allows_limit_then_refuses_with_time_until_oldest_leaves() -> None:
    clock = FakeClock()
    window = SlidingWindow(limit=3, window=10.0, clock=clock)
    assert [window.acquire() for _ in range(3)] == [None, None, None]
    clock.now += 4
    assert window.acquire() == 6.0  # the first event leaves the window 6 s from now


def test_window_slides() -> None:
    clock = FakeClock()
    window = SlidingWindow(limit=2, window=10.0, clock=clock)
    window.acquire()
    clock.now += 5
    window.acquire()
    clock.now += 5.0  # the first is exactly 10 s old: out of the window
    assert window.acquire() is None
    assert window.acquire() == 5.0


def test_refused_requests_do_not_count() -> None:
    clock = FakeClock()
    window = SlidingWindow(limit=1, window=10.0, clock=clock)
    window.acquire()
    for _ in range(100):
        assert window.acquire() is not None
    clock.now += 10
    assert window.acquire() is None


def test_limiter_is_per_key_endpoint_and_operation() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"run": 1, "cancel": 1}, 10.0, clock)
    assert limiter.check("0", "a", "run") is None
    assert limiter.check("0", "a", "run") == 10
    assert limiter.check("1", "a", "run") is None
    assert limiter.check("0", "b", "run") is None
    assert limiter.check("0", "a", "cancel") is None


def test_unlimited_operation_and_retry_after_at_least_one_second() -> None:
    clock = FakeClock()
    limiter = RateLimiter({"run": 1}, 10.0, clock)
    assert all(limiter.check("0", "a", "health") is None for _ in range(10_000))
    limiter.check("0", "a", "run")
    clock.now += 9.9
    assert limiter.check("0", "a", "run") == 1


# -- issue 16 item 4: concurrency caps ---------------------------------------------------------


def test_a_concurrency_cap_counts_requests_in_flight_per_user_and_endpoint() -> None:
    caps = ConcurrencyLimiter({"cancel": 2})
    first, second = caps.acquire("u", "e", "cancel"), caps.acquire("u", "e", "cancel")
    assert first is not None
    assert second is not None
    assert caps.acquire("u", "e", "cancel") is None  # a third at once: refused
    assert caps.acquire("u", "other", "cancel") is not None  # another endpoint's own caps
    caps.release(first)
    assert caps.acquire("u", "e", "cancel") is not None


def test_an_operation_without_a_cap_is_never_refused() -> None:
    caps = ConcurrencyLimiter({})
    slots = [caps.acquire("u", "e", "health") for _ in range(1000)]
    assert None not in slots
    for slot in slots:
        assert slot is not None
        caps.release(slot)


# -- issue 16 item 5: REST v2 quotas and their headers -------------------------------------------


def test_quotas_count_fixed_windows_and_say_so_in_headers() -> None:
    now = [120.0]  # the start of a minute
    quota = Quota({"minute": 2, "hour": 100}, lambda: now[0])
    allowed, headers = quota.take()
    assert allowed is None
    assert headers == {
        "RateLimit": '"minute";r=1;t=60, "hour";r=99;t=3480',
        "RateLimit-Policy": '"minute";q=2;w=60, "hour";q=100;w=3600',
    }
    now[0] = 150.0
    assert quota.take()[0] is None
    wait, headers = quota.take()  # the third in this minute
    assert wait == 30
    assert headers["RateLimit"].startswith('"minute";r=0;t=30')
    now[0] = 180.0  # a new minute
    assert quota.take()[0] is None


def test_a_quota_window_must_be_known() -> None:
    with pytest.raises(ValueError, match="week"):
        Quota({"week": 1}, lambda: 0.0)
