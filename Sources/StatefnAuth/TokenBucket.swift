// One caller's token bucket: `rate` tokens a second up to `burst`. A pure value advanced by the clock it is given,
// so it is tested with a fake clock.

public struct TokenBucket: Sendable, Equatable {
    public var rate: Double
    public var burst: Double
    public private(set) var tokens: Double
    public private(set) var updatedAt: Double

    public init(rate: Double, burst: Double, now: Double) {
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updatedAt = now
    }

    public enum Decision: Sendable, Equatable {
        case allowed
        /// Whole seconds until one token is back (at least 1), for `Retry-After`.
        case limited(retryAfter: Int)
    }

    /// Takes one token if there is one.
    public mutating func take(now: Double) -> Decision {
        refill(now: now)
        if tokens >= 1 {
            tokens -= 1
            return .allowed
        }
        let wait = (1 - tokens) / rate
        return .limited(retryAfter: max(1, Int(wait.rounded(.up))))
    }

    /// What `take` would decide now, taking nothing.
    public func peek(now: Double) -> Decision {
        var copy = self
        return copy.take(now: now)
    }

    /// True when the bucket has refilled completely, so forgetting it changes nothing.
    public func isFull(now: Double) -> Bool {
        tokens + max(0, now - updatedAt) * rate >= burst
    }

    private mutating func refill(now: Double) {
        // A clock that steps back adds nothing rather than taking tokens away.
        if now > updatedAt {
            tokens = min(burst, tokens + (now - updatedAt) * rate)
            updatedAt = now
        }
    }
}
