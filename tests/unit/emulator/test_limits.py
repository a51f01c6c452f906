from bridge.emulator.limits import RateLimiter, SlidingWindow


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
