// The pool's bookkeeping as a pure value: which slots are free, who waits, and what the owner must do next.
// It does no I/O and reads no clock; PostgresPool changes it under a lock and carries out the actions after.

/// Connections are slot indices; `Request` is whatever the owner runs on a slot (a closure in the pool, plain
/// values in tests). Times are nanoseconds on any monotonic clock the owner chooses.
struct PoolStateMachine<Request> {
    enum BorrowAction {
        /// Run `request` on `slot` now.
        case run(slot: Int, Request)
        case fail(Request, PostgresError)
        /// The request waits for a slot. If `sweepAt` is set, no sweep is scheduled yet: schedule one then.
        case wait(sweepAt: UInt64?)
    }

    enum ReleaseAction {
        /// The slot goes straight on to this waiting request.
        case run(Request)
        case park
        /// The pool was closed while the slot was busy: close its connection.
        case close
    }

    struct SweepAction {
        /// Requests that waited past their deadline: fail them with `.poolTimeout`.
        var expired: [Request]
        /// When the next sweep is due, if anyone still waits.
        var nextSweepAt: UInt64?
    }

    struct CloseAction {
        var idleSlots: [Int]
        /// Requests that were waiting: fail them with `.poolClosed`.
        var waiters: [Request]
    }

    private struct Waiter {
        var request: Request
        var deadline: UInt64
    }

    /// Free slots, most recently used last: reusing it first keeps a quiet pool down to few open connections.
    private var idleSlots: [Int]
    /// Every waiter gets the same timeout, so deadlines only grow from the first to the last.
    private var waiters = FIFO<Waiter>()
    private var sweepScheduled = false
    private var closed = false
    private let waitTimeout: UInt64

    init(slotCount: Int, waitTimeout: UInt64) {
        precondition(slotCount > 0, "a pool needs at least one connection")
        idleSlots = Array((0..<slotCount).reversed())
        self.waitTimeout = waitTimeout
    }

    var waitingCount: Int { waiters.count }
    var idleCount: Int { idleSlots.count }

    mutating func borrow(_ request: Request, now: UInt64) -> BorrowAction {
        if closed { return .fail(request, PostgresError(code: .poolClosed, detail: "the pool is closed")) }
        if let slot = idleSlots.popLast() { return .run(slot: slot, request) }
        let deadline = now &+ waitTimeout
        waiters.append(Waiter(request: request, deadline: deadline))
        if sweepScheduled { return .wait(sweepAt: nil) }
        sweepScheduled = true
        return .wait(sweepAt: deadline)
    }

    mutating func release(slot: Int) -> ReleaseAction {
        if closed { return .close }
        if let waiter = waiters.popFirst() { return .run(waiter.request) }
        idleSlots.append(slot)
        return .park
    }

    /// Called when a scheduled sweep fires.
    mutating func sweep(now: UInt64) -> SweepAction {
        var expired: [Request] = []
        while let first = waiters.first, first.deadline <= now {
            expired.append(first.request)
            _ = waiters.popFirst()
        }
        let next = waiters.first?.deadline
        sweepScheduled = next != nil
        return SweepAction(expired: expired, nextSweepAt: next)
    }

    mutating func close() -> CloseAction {
        if closed { return CloseAction(idleSlots: [], waiters: []) }
        closed = true
        let action = CloseAction(idleSlots: idleSlots, waiters: waiters.removeAll().map(\.request))
        idleSlots = []
        return action
    }
}
