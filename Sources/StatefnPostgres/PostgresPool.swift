// A fixed set of connections shared by every request. The bookkeeping is PoolStateMachine, changed under one
// lock; the pool carries out its actions after unlocking: running requests on slot queues, failing waiters.
import Dispatch
import Foundation
import Logging

/// A fixed-size pool of connections, each served by its own thread so libpq's blocking calls never run on
/// Swift's cooperative thread pool. Broken connections are replaced on their next use.
public final class PostgresPool: Sendable {
    /// Runs on the slot's queue with `.success`, or anywhere with `.failure` when no slot will come.
    typealias Request = @Sendable (Result<ConnectionSlot, PostgresError>) -> Void

    private let slots: [ConnectionSlot]
    private let state: LockedState<PoolStateMachine<Request>>
    private let waitTimeout: Duration
    /// Serial, so GCD gives it its own thread: timeouts fire even when blocking work fills the global queues.
    private let timerQueue = DispatchQueue(label: "statefn.postgres.pool-timer")
    private let logger: Logger

    /// `waitTimeout` bounds how long a caller waits for a free connection before `.poolTimeout`.
    public init(config: PostgresConfig, size: Int, logger: Logger, waitTimeout: Duration = .seconds(10)) {
        slots = (0..<size).map { ConnectionSlot(index: $0, config: config, logger: logger) }
        state = LockedState(PoolStateMachine(slotCount: size, waitTimeout: waitTimeout.nanoseconds))
        self.waitTimeout = waitTimeout
        self.logger = logger
    }

    /// Borrows a connection, runs `body` on its thread, and gives the connection back. A transaction opened
    /// in `body` and left open is rolled back before the connection is reused.
    public func withConnection<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) throws -> T
    ) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            submit { outcome in
                switch outcome {
                case .success(let slot): continuation.resume(with: Result { try slot.run(body) })
                case .failure(let error): continuation.resume(throwing: error)
                }
            }
        }
    }

    /// Shorthand for one statement on any connection.
    public func execute(_ sql: String, _ parameters: [String?] = []) async throws -> PostgresResult {
        try await withConnection { try $0.execute(sql, parameters) }
    }

    /// A statement that only reads, tried once more when its connection turns out to be broken (the database
    /// restarted since the connection was last used; the pool replaces it for the second try). Reading twice is
    /// harmless, and it spares the caller an error for what was only a stale connection.
    public func read(_ sql: String, _ parameters: [String?] = []) async throws -> PostgresResult {
        do {
            return try await execute(sql, parameters)
        } catch let error as PostgresError where error.code == .connectionFailed {
            return try await execute(sql, parameters)
        }
    }

    /// How many connections are lent out and how many callers wait for one, for metrics.
    public struct Usage: Sendable {
        public var size: Int
        public var inUse: Int
        public var waiting: Int
    }

    public var usage: Usage {
        state.withLock { Usage(size: slots.count, inUse: slots.count - $0.idleCount, waiting: $0.waitingCount) }
    }

    /// Closes every connection; later calls fail with `.poolClosed`. Calls in flight finish first.
    public func close() {
        let action = state.withLock { $0.close() }
        let error = PostgresError(code: .poolClosed, detail: "the pool was closed while waiting")
        for request in action.waiters { request(.failure(error)) }
        for index in action.idleSlots {
            let slot = slots[index]
            slot.queue.async { slot.close() }
        }
    }

    private func submit(_ request: @escaping Request) {
        let now = DispatchTime.now().uptimeNanoseconds
        switch state.withLock({ $0.borrow(request, now: now) }) {
        case .run(let index, let request):
            slots[index].queue.async { self.serve(slot: index, first: request) }
        case .fail(let request, let error):
            request(.failure(error))
        case .wait(let sweepAt):
            if let sweepAt { scheduleSweep(at: sweepAt) }
        }
    }

    /// Runs requests on one slot's queue until nobody waits, so a busy slot goes from one request to the next
    /// without a thread hop.
    private func serve(slot index: Int, first: Request) {
        let slot = slots[index]
        var request = first
        while true {
            request(.success(slot))
            switch state.withLock({ $0.release(slot: index) }) {
            case .run(let next): request = next
            case .park: return
            case .close:
                slot.close()
                return
            }
        }
    }

    private func scheduleSweep(at deadline: UInt64) {
        timerQueue.asyncAfter(deadline: DispatchTime(uptimeNanoseconds: deadline)) { [weak self] in
            self?.sweep()
        }
    }

    private func sweep() {
        let now = DispatchTime.now().uptimeNanoseconds
        let action = state.withLock { $0.sweep(now: now) }
        if !action.expired.isEmpty {
            logger.warning(
                "no database connection became free in time", metadata: ["waiters": "\(action.expired.count)"])
            let error = PostgresError(code: .poolTimeout, detail: "no connection became free within \(waitTimeout)")
            for request in action.expired { request(.failure(error)) }
        }
        if let next = action.nextSweepAt { scheduleSweep(at: next) }
    }
}

/// A value behind a lock, changed only inside `withLock`, which the pool keeps short and free of I/O.
final class LockedState<Value>: @unchecked Sendable {  // `value` is only touched while holding `lock`.
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) -> R) -> R {
        lock.lock()
        defer { lock.unlock() }
        return body(&value)
    }
}

extension Duration {
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(max(seconds, 0)) * 1_000_000_000 + UInt64(max(attoseconds, 0) / 1_000_000_000)
    }
}
