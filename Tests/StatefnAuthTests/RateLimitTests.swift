// Token buckets on a fake clock.
import StatefnAuth
import Synchronization
import Testing

@Suite("rate limits", .timeLimit(.minutes(1)))
struct RateLimitTests {
    @Test("a bucket allows its burst, then refills at its rate")
    func bucket() {
        var bucket = TokenBucket(rate: 2, burst: 3, now: 100)
        #expect(bucket.take(now: 100) == .allowed)
        #expect(bucket.take(now: 100) == .allowed)
        #expect(bucket.take(now: 100) == .allowed)
        #expect(bucket.take(now: 100) == .limited(retryAfter: 1))
        #expect(bucket.take(now: 100.5) == .allowed, "half a second at 2/s is one token")
        #expect(bucket.take(now: 100.5) == .limited(retryAfter: 1))
        #expect(bucket.take(now: 1000) == .allowed)
        #expect(bucket.tokens == 2, "refill stops at the burst")
        #expect(bucket.take(now: 10) == .allowed, "a clock stepping back adds nothing")
    }

    @Test("Retry-After rounds the wait up to whole seconds")
    func retryAfter() {
        var bucket = TokenBucket(rate: 1.0 / 60, burst: 1, now: 0)
        #expect(bucket.take(now: 0) == .allowed)
        #expect(bucket.take(now: 0) == .limited(retryAfter: 60))
        #expect(bucket.take(now: 30) == .limited(retryAfter: 30))
    }

    @Test("peek tells what take would, and takes nothing")
    func peek() {
        let now = Mutex(0.0)
        let limiter = RateLimiter(rate: 1, burst: 2, clock: { now.withLock { $0 } })
        #expect(limiter.peek("10.0.0.1") == .allowed, "an address never seen has its whole burst")
        #expect(limiter.take("10.0.0.1") == .allowed)
        #expect(limiter.peek("10.0.0.1") == .allowed)
        #expect(limiter.peek("10.0.0.1") == .allowed, "peeking twice takes nothing")
        #expect(limiter.take("10.0.0.1") == .allowed)
        #expect(limiter.peek("10.0.0.1") == .limited(retryAfter: 1))
        now.withLock { $0 = 1 }
        #expect(limiter.peek("10.0.0.1") == .allowed)
    }

    @Test("each caller has its own bucket")
    func perCaller() {
        let now = Mutex(0.0)
        let limiter = RateLimiter(rate: 1, burst: 1, clock: { now.withLock { $0 } })
        #expect(limiter.take("key:a") == .allowed)
        #expect(limiter.take("key:a") == .limited(retryAfter: 1))
        #expect(limiter.take("key:b") == .allowed)
        now.withLock { $0 = 1 }
        #expect(limiter.take("key:a") == .allowed)
    }

    @Test("rates parse from N/s and N/min")
    func parse() {
        #expect(RateLimiter.parseRate("100/s") == 100)
        #expect(RateLimiter.parseRate("60/min") == 1)
        #expect(RateLimiter.parseRate("5") == 5)
        #expect(RateLimiter.parseRate("0/s") == nil)
        #expect(RateLimiter.parseRate("x/s") == nil)
        #expect(RateLimiter.parseRate("5/h") == nil)
    }
}
