// Wall-clock seconds since 1970, injectable so cache windows, token lifetimes and buckets are tested without waiting.
import Foundation

public typealias AuthClock = @Sendable () -> Double

public enum SystemAuthClock {
    public static let now: AuthClock = { Date().timeIntervalSince1970 }
}
