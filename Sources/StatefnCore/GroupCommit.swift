// Group commit (DESIGN.md section 4): commits of different entities that arrive while earlier ones are on their way
// share one statement, one transaction and one WAL flush. No timer waits for a batch to fill: a commit that finds a
// lane free goes at once, alone, so a quiet gateway adds nothing; under load the lanes are busy, commits queue, and
// whoever takes the next turn takes every queued commit with it.
//
// A lane is a turn, not a thread. The commit that opens a lane runs its batch in its own task; when the batch is
// done it hands the lane to the oldest commit still queued (which then runs the next batch, with itself in it) and
// returns. So a busy gateway has at most `lanes` group statements in flight and no extra task or thread hop.
import StatefnPostgres
import Synchronization

final class CommitGroups<Request: Sendable, Key: Hashable & Sendable, Outcome: Sendable>: Sendable {
    typealias Results = [Result<Outcome, any Error>]
    /// Runs one batch; returns one result per request, in order.
    typealias Run = @Sendable ([Request]) async -> Results

    private enum Turn: Sendable {
        case done(Result<Outcome, any Error>)
        /// The lane is this waiter's: it runs the next batch.
        case lead
    }

    private struct Waiter: Sendable {
        var request: Request
        var continuation: CheckedContinuation<Turn, Never>
    }

    private struct State: Sendable {
        var queue = FIFO<Waiter>()
        var openLanes = 0
    }

    private let state = Mutex(State())
    private let lanes: Int
    private let maxBatch: Int
    /// Requests with the same key never share a batch (two commits of one entity may not).
    private let key: @Sendable (Request) -> Key

    init(lanes: Int, maxBatch: Int, key: @escaping @Sendable (Request) -> Key) {
        precondition(lanes > 0 && maxBatch > 0)
        self.lanes = lanes
        self.maxBatch = maxBatch
        self.key = key
    }

    /// Commits `request`, alone or with others; returns (or throws) its own outcome. `run` commits a batch; every
    /// caller passes the same one.
    func commit(_ request: Request, run: Run) async throws -> Outcome {
        let turn = await withCheckedContinuation { (continuation: CheckedContinuation<Turn, Never>) in
            let lead = state.withLock { state -> Bool in
                if state.openLanes < lanes {
                    state.openLanes += 1
                    return true
                }
                state.queue.append(Waiter(request: request, continuation: continuation))
                return false
            }
            if lead { continuation.resume(returning: .lead) }
        }
        switch turn {
        case .done(let result): return try result.get()
        case .lead: return try await lead(with: request, run: run).get()
        }
    }

    /// Runs one batch led by `request`, then passes the lane on.
    private func lead(with request: Request, run: Run) async -> Result<Outcome, any Error> {
        var batch = [request]
        var keys: Set<Key> = [key(request)]
        let followers = state.withLock { state -> [Waiter] in
            var taken: [Waiter] = []
            var skipped: [Waiter] = []
            while batch.count < maxBatch, let waiter = state.queue.popFirst() {
                if keys.insert(key(waiter.request)).inserted {
                    taken.append(waiter)
                    batch.append(waiter.request)
                } else {
                    skipped.append(waiter)
                }
            }
            // A commit that could not join keeps its place at the front, for the next turn.
            state.queue.prepend(skipped)
            return taken
        }
        let results = await run(batch)
        precondition(results.count == batch.count, "a group of \(batch.count) got \(results.count) results")
        for (waiter, result) in zip(followers, results.dropFirst()) {
            waiter.continuation.resume(returning: .done(result))
        }
        let next = state.withLock { state -> Waiter? in
            guard let next = state.queue.popFirst() else {
                state.openLanes -= 1
                return nil
            }
            return next
        }
        next?.continuation.resume(returning: .lead)
        return results[0]
    }
}

/// `body`'s value or error, as a Result (Result's own initializer cannot await).
func result<T>(of body: () async throws -> T) async -> Result<T, any Error> {
    do {
        return .success(try await body())
    } catch {
        return .failure(error)
    }
}
