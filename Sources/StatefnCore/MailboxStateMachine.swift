// The order of one entity's commands: a pure state machine (no I/O, no locks), so arrival order can be tested
// directly. `EntityMailboxes` owns one per busy entity and carries out the actions it returns.
import StatefnPostgres

/// One entity's queue. The first caller runs at once; later callers wait in arrival order, and each finishing
/// caller hands the entity straight to the next, so no third caller can slip in between.
struct MailboxStateMachine<Waiter> {
    enum AcquireAction {
        case run
        case wait
    }
    enum ReleaseAction {
        /// Resume this waiter: it now owns the entity.
        case resume(Waiter)
        /// Nobody is waiting: the mailbox is empty and can be dropped.
        case idle
    }

    private var running = false
    private var waiters = FIFO<Waiter>()

    var queued: Int { waiters.count }

    mutating func acquire(_ waiter: Waiter) -> AcquireAction {
        guard running else {
            running = true
            return .run
        }
        waiters.append(waiter)
        return .wait
    }

    /// Takes up to `max` waiters from the front of the queue, in order, while `accept` takes them: they join the
    /// running caller's turn and never get one of their own.
    mutating func takeQueued(max: Int, while accept: (Waiter) -> Bool) -> [Waiter] {
        precondition(running, "took from a mailbox that was not running")
        var taken: [Waiter] = []
        while taken.count < max, let next = waiters.first, accept(next) {
            taken.append(next)
            _ = waiters.popFirst()
        }
        return taken
    }

    mutating func release() -> ReleaseAction {
        precondition(running, "released a mailbox that was not running")
        guard let next = waiters.popFirst() else {
            running = false
            waiters.removeAll()
            return .idle
        }
        return .resume(next)
    }
}
