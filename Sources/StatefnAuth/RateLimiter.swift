// Per-caller token buckets (`--rate-limit N/s`, `--rate-burst`), keyed by API key id or JWT subject. The buckets
// live under one lock; a full bucket is the same as no bucket, so full ones are dropped when the table grows.
import Synchronization
import StatefnText

public final class RateLimiter: Sendable {
    public let rate: Double
    public let burst: Double
    private let clock: AuthClock
    // Keyed by the caller's UTF-8 bytes: `String` keys would merge subjects that are only canonically equivalent.
    private let buckets = Mutex<[[UInt8]: TokenBucket]>([:])
    private let sweepAbove = 10_000

    public init(rate: Double, burst: Double, clock: @escaping AuthClock = SystemAuthClock.now) {
        precondition(rate > 0 && burst >= 1, "a rate limit needs a positive rate and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.clock = clock
    }

    public func take(_ key: String) -> TokenBucket.Decision {
        let now = clock()
        let key = Array(key.utf8)
        return buckets.withLock { buckets in
            if buckets.count > sweepAbove { buckets = buckets.filter { !$0.value.isFull(now: now) } }
            var bucket = buckets[key] ?? TokenBucket(rate: rate, burst: burst, now: now)
            let decision = bucket.take(now: now)
            buckets[key] = bucket
            return decision
        }
    }

    /// Whether `key`'s bucket has a token, taking none.
    public func peek(_ key: String) -> TokenBucket.Decision {
        let now = clock()
        return buckets.withLock { $0[Array(key.utf8)]?.peek(now: now) ?? .allowed }
    }

    /// Parses `N/s`, `N/m` or `N/min` (or a bare N, per second) into tokens per second.
    public static func parseRate(_ text: String) -> Double? {
        let parts = text.split(separator: "/", maxSplits: 1).map { $0.trimming { $0 == " " } }
        guard let first = parts.first, let count = Double(first), count > 0, count.isFinite else { return nil }
        switch parts.count == 2 ? parts[1] : "s" {
        case "s", "sec", "second": return count
        case "m", "min", "minute": return count / 60
        default: return nil
        }
    }
}

