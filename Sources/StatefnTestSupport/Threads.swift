// Runs blocking test clients on their own threads, so real concurrency does not depend on (or starve) Swift's
// two cooperative threads.
import Foundation

/// Runs `body(0..<count)` on `count` threads at once and returns their results in index order.
public func onThreads<T: Sendable>(_ count: Int, _ body: @escaping @Sendable (Int) throws -> T) async throws -> [T] {
    try await withThrowingTaskGroup(of: (Int, T).self) { group in
        for index in 0..<count {
            group.addTask {
                try await withCheckedThrowingContinuation { continuation in
                    Thread.detachNewThread {
                        continuation.resume(with: Result { (index, try body(index)) })
                    }
                }
            }
        }
        var results = [(Int, T)]()
        for try await result in group { results.append(result) }
        return results.sorted { $0.0 < $1.0 }.map(\.1)
    }
}

/// Runs one blocking call on its own thread.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await onThreads(1) { _ in try body() }[0]
}
