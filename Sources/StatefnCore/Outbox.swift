// The outbox (DESIGN.md sections 3 and 4): effects and timers committed with the state that caused them, and the
// dispatcher that runs each as a command on its target, every replica claiming its share.
//
// - Claims are a lease: a due row is claimed with `FOR UPDATE SKIP LOCKED` and `claimed_until`, so replicas never
//   run the same row at once, and a dispatcher that dies mid-way only delays its rows until the lease ends.
// - Each row runs with its id as the Idempotency-Key, under the principal `fn:<source function>/<source entity>`:
//   a row that runs twice (its dispatcher died after the commit, before the delete) replays the stored answer.
// - Polling is the path that must work alone (one indexed statement per interval per replica); a local commit, or
//   PostgreSQL's NOTIFY from another replica, only wakes the dispatcher sooner.
import Logging
import StatefnPostgres
import Synchronization
import StatefnText

/// One claimed outbox row.
public struct OutboxRow: Sendable, Equatable {
    public var id: String
    public var function: String
    public var entity: String?
    public var command: String
    /// The payload as JSON text.
    public var payload: String
    public var sourceFunction: String
    public var sourceEntity: String
    /// Runs so far, this one included.
    public var attempts: Int
    /// The claim's `claimed_until`, as the database printed it: what marks the claim as this run's. A run that
    /// outlived its lease writes nothing over the claim of the replica that took the row over.
    public var claim: String = ""
}

public struct OutboxConfiguration: Sendable {
    /// How often each replica looks for due rows when nothing woke it.
    public var pollInterval: Duration = .milliseconds(250)
    /// Rows claimed per statement, and run at once.
    public var batchSize = 32
    /// How long a claim holds a row; a dispatcher that dies mid-run leaves its rows to others after this.
    public var lease: Duration = .seconds(60)
    /// Runs before a failing row is dead-lettered.
    public var maxAttempts = 20
    /// The retry backoff's first step and ceiling.
    public var backoffBase: Duration = .milliseconds(200)
    public var backoffCeiling: Duration = .seconds(60)
    public init() {}
}

/// The outbox's SQL.
struct OutboxStore: Sendable {
    let pool: PostgresPool

    /// Claims up to `limit` due rows for `leaseMs`, and learns how long until the next pending row falls due
    /// (nil: none pending): one statement, one round trip.
    func claim(limit: Int, leaseMs: Int64) async throws -> (rows: [OutboxRow], nextDueMs: Int64?) {
        let result = try await pool.execute(
            """
            WITH due AS (
                SELECT id FROM outbox
                WHERE dead_at IS NULL AND not_before <= now() AND (claimed_until IS NULL OR claimed_until <= now())
                ORDER BY not_before LIMIT $1::bigint
                FOR UPDATE SKIP LOCKED
            ), claimed AS (
                UPDATE outbox SET claimed_until = now() + $2::bigint * INTERVAL '1 millisecond',
                    attempts = outbox.attempts + 1
                FROM due WHERE outbox.id = due.id
                RETURNING outbox.id, outbox.function, outbox.entity_id, outbox.command, outbox.payload,
                    outbox.source_function, outbox.source_entity, outbox.attempts, outbox.claimed_until
            )
            SELECT next.wait_ms, claimed.id::text, claimed.function, claimed.entity_id, claimed.command,
                claimed.payload::text, claimed.source_function, claimed.source_entity, claimed.attempts,
                claimed.claimed_until::text
            FROM (
                SELECT CAST(ceil(extract(epoch FROM min(not_before) - now()) * 1000) AS bigint) AS wait_ms
                FROM outbox WHERE dead_at IS NULL AND not_before > now()
            ) AS next LEFT JOIN claimed ON true
            """, [String(limit), String(leaseMs)])
        var rows: [OutboxRow] = []
        var nextDue: Int64?
        for row in result.rows {
            nextDue = row[0].flatMap { Int64($0) }
            guard let id = row[1], let function = row[2], let command = row[4], let source = row[6],
                let sourceEntity = row[7], let attempts = row[8].flatMap({ Int($0) })
            else { continue }
            rows.append(
                OutboxRow(
                    id: id, function: function, entity: row[3], command: command, payload: row[5] ?? "null",
                    sourceFunction: source, sourceEntity: sourceEntity, attempts: attempts, claim: row[9] ?? ""))
        }
        return (rows, nextDue)
    }

    /// Deletes rows whose effects took effect.
    func delete(_ ids: [String]) async throws {
        guard !ids.isEmpty else { return }
        _ = try await pool.execute("DELETE FROM outbox WHERE id = ANY($1::uuid[])", [PostgresArray.text(ids)])
    }

    /// Gives claims back (a draining dispatcher that did not run them), without counting the run.
    func release(_ rows: [OutboxRow]) async throws {
        for row in rows {
            _ = try await pool.execute(
                """
                UPDATE outbox SET claimed_until = NULL, attempts = attempts - 1
                WHERE id = $1::uuid AND claimed_until = $2::timestamptz
                """, [row.id, row.claim])
        }
    }

    /// Runs the row again after `delayMs`, if the claim is still this run's.
    func retryLater(_ row: OutboxRow, delayMs: Int64, error: String) async throws {
        _ = try await pool.execute(
            """
            UPDATE outbox SET claimed_until = NULL, last_error = $3,
                not_before = now() + $2::bigint * INTERVAL '1 millisecond'
            WHERE id = $1::uuid AND claimed_until = $4::timestamptz
            """, [row.id, String(delayMs), error, row.claim])
    }

    /// Dead-letters the row, if the claim is still this run's.
    func deadLetter(_ row: OutboxRow, error: String) async throws {
        _ = try await pool.execute(
            """
            UPDATE outbox SET claimed_until = NULL, dead_at = now(), last_error = $2
            WHERE id = $1::uuid AND claimed_until = $3::timestamptz
            """, [row.id, error, row.claim])
    }

    /// What `revive` did with a dead row.
    enum Revival: Equatable {
        case pending
        /// Its command had taken effect after all (a 2xx stored under its key: its last run's answer was lost), so
        /// the row was deleted rather than run again.
        case alreadyDone
        case notDead
    }

    /// Makes a dead row pending again, due now, with its attempts reset.
    ///
    /// A refusal (4xx) that killed it was stored under the row's Idempotency-Key like any answer, and would only be
    /// replayed: it is dropped in the same transaction (a refusal commits nothing, so nothing else hangs on it). A
    /// 2xx under the key means the command took effect in a run whose answer was lost: then the row goes instead.
    func revive(_ id: String) async throws -> Revival {
        try await pool.withConnection { db in
            _ = try db.execute("BEGIN")
            let dead = try db.execute(
                """
                SELECT function, entity_id, source_function, source_entity FROM outbox
                WHERE id = $1::uuid AND dead_at IS NOT NULL FOR UPDATE
                """, [id])
            guard let row = dead.rows.first else {
                _ = try db.execute("ROLLBACK")
                return .notDead
            }
            var revival = Revival.pending
            if let entity = row[1] {
                let record: [String?] = ["fn:\(row[2] ?? "")/\(row[3] ?? "")", row[0], entity, id]
                let stored = try db.execute(
                    "SELECT status FROM idempotency WHERE caller = $1 AND function = $2 AND entity_id = $3 AND key = $4",
                    record)
                if let status = stored.rows.first?[0].flatMap({ Int($0) }), (200..<300).contains(status) {
                    revival = .alreadyDone
                } else {
                    _ = try db.execute(
                        "DELETE FROM idempotency WHERE caller = $1 AND function = $2 AND entity_id = $3 AND key = $4",
                        record)
                }
            }
            if revival == .alreadyDone {
                _ = try db.execute("DELETE FROM outbox WHERE id = $1::uuid", [id])
            } else {
                _ = try db.execute(
                    """
                    UPDATE outbox SET dead_at = NULL, claimed_until = NULL, attempts = 0, not_before = now()
                    WHERE id = $1::uuid
                    """, [id])
            }
            _ = try db.execute("COMMIT")
            return revival
        }
    }

    /// Rows waiting and dead, and how long the oldest due row has waited past its time, for metrics.
    struct Depth: Sendable {
        var pending: Int
        var dead: Int
        var lagSeconds: Double
    }

    func depth() async throws -> Depth {
        let row = try await pool.read(
            """
            SELECT count(*) FILTER (WHERE dead_at IS NULL), count(*) FILTER (WHERE dead_at IS NOT NULL),
                COALESCE(extract(epoch FROM now() - min(not_before) FILTER (WHERE dead_at IS NULL
                    AND not_before <= now())), 0)::float8
            FROM outbox
            """
        ).rows.first
        return Depth(
            pending: row?[0].flatMap { Int($0) } ?? 0, dead: row?[1].flatMap { Int($0) } ?? 0,
            lagSeconds: row?[2].flatMap { Double($0) } ?? 0)
    }

    func exists(_ id: String) async throws -> Bool {
        try await pool.read("SELECT 1 FROM outbox WHERE id = $1::uuid", [id]).rows.isEmpty == false
    }

    /// Pending rows by due time, or dead rows by age, as `GET /v1/outbox` lists them.
    func list(dead: Bool, limit: Int) async throws -> [[String?]] {
        let condition = dead ? "dead_at IS NOT NULL ORDER BY created_at" : "dead_at IS NULL ORDER BY not_before"
        return try await pool.read(
            """
            SELECT id::text, function, entity_id, command, attempts, last_error,
                CAST(extract(epoch FROM not_before) * 1000 AS bigint), source_function, source_entity
            FROM outbox WHERE \(condition) LIMIT $1::bigint
            """, [String(limit)]
        ).rows
    }

    /// The canonical text form of a uuid: 8-4-4-4-12 hex digits.
    static func isUUID(_ text: String) -> Bool {
        let bytes = Array(text.utf8)
        guard bytes.count == 36 else { return false }
        for (index, byte) in bytes.enumerated() {
            if [8, 13, 18, 23].contains(index) {
                guard byte == UInt8(ascii: "-") else { return false }
            } else {
                guard Hex.value(of: byte) != nil else { return false }
            }
        }
        return true
    }
}

/// What became of one run of an outbox row.
enum EffectOutcome: Sendable, Equatable {
    /// It took effect (or had already: a replayed answer): delete the row.
    case done
    /// Worth another try (a 5xx, a timeout, the gateway's own 409 past the conflict budget, a 429).
    case retry(String)
    /// It will never succeed as it is (a 4xx: unknown function or command, no scope; or the function's own refusal,
    /// whatever its status): dead-letter it.
    case dead(String)

    /// `refusal`: the target function's own answer (a business error), final whatever its status.
    init(status: Int, detail: String, refusal: Bool = false) {
        switch status {
        case 200..<300: self = .done
        case _ where refusal: self = .dead("\(status): \(detail)")
        case 408, 409, 425, 429, 500...599: self = .retry("\(status): \(detail)")
        default: self = .dead("\(status): \(detail)")
        }
    }
}

/// Claims due rows and runs them, in every replica, until cancelled.
final class OutboxDispatcher: Sendable {
    typealias Runner = @Sendable (OutboxRow) async -> EffectOutcome

    private let configuration: OutboxConfiguration
    private let store: OutboxStore
    private let logger: Logger
    private let wakeups = WakeUp()
    private let runningBatches = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)

    init(configuration: OutboxConfiguration, pool: PostgresPool, logger: Logger) {
        self.configuration = configuration
        self.store = OutboxStore(pool: pool)
        self.logger = logger
    }

    /// A commit through this replica wrote effects, the soonest due in `delayMs`.
    func wake(afterMs delayMs: Int64 = 0) { wakeups.signal(afterMs: delayMs) }

    /// From now on nothing more is claimed, and claimed rows not yet started go back; `run` returns once what
    /// was started has finished.
    func stop() {
        stopped.store(true, ordering: .releasing)
        wakeups.signal()
    }

    private var stopping: Bool { Task.isCancelled || stopped.load(ordering: .acquiring) }

    /// Claims and runs due rows until cancelled or stopped; it then gives back what it claimed but did not start,
    /// and lets what it started finish.
    func run(_ runner: @escaping Runner) async {
        let clock = ContinuousClock()
        // Batches run side by side, up to `concurrentBatches`: a slow effect holds only its own batch, and due rows
        // behind it (a timer) are claimed meanwhile. Leaving the group waits for the batches under way.
        await withDiscardingTaskGroup { group in
            while !stopping {
                if runningBatches.load(ordering: .acquiring) >= Self.concurrentBatches {
                    await wakeups.wait(upTo: .milliseconds(50), clock: clock)
                    continue
                }
                var nextDueMs: Int64?
                do {
                    let (rows, next) = try await store.claim(
                        limit: configuration.batchSize, leaseMs: Int64(configuration.lease.milliseconds))
                    nextDueMs = next
                    if !rows.isEmpty {
                        runningBatches.add(1, ordering: .acquiringAndReleasing)
                        group.addTask {
                            await self.runBatch(rows, runner)
                            self.runningBatches.subtract(1, ordering: .acquiringAndReleasing)
                            // Finished rows may have committed new effects due now: look again at once.
                            self.wakeups.signal()
                        }
                        continue
                    }
                } catch {
                    logger.warning("outbox claim failed", metadata: ["error": "\(error)"])
                }
                var wait = configuration.pollInterval
                if let nextDueMs { wait = min(wait, .milliseconds(max(1, nextDueMs))) }
                await wakeups.wait(upTo: wait, clock: clock)
            }
        }
    }

    /// Batches of claimed rows running at once in one replica.
    static let concurrentBatches = 4

    private func runBatch(_ rows: [OutboxRow], _ runner: @escaping Runner) async {
        let outcomes = await withTaskGroup(of: (OutboxRow, EffectOutcome?).self) { group in
            for row in rows {
                group.addTask {
                    // A dispatcher told to stop does not start what it claimed: the claim goes back. What it started
                    // runs in a task of its own, which the stop does not cancel: it finishes, and its outcome counts.
                    if self.stopping { return (row, nil) }
                    return (row, await Task { await runner(row) }.value)
                }
            }
            var outcomes: [(OutboxRow, EffectOutcome?)] = []
            for await outcome in group { outcomes.append(outcome) }
            return outcomes
        }
        var done: [String] = []
        var unstarted: [OutboxRow] = []
        for (row, outcome) in outcomes {
            switch outcome {
            case nil: unstarted.append(row)
            case .done?:
                done.append(row.id)
                RequestMetrics.effect(.done)
            case .retry(let why)? where row.attempts >= configuration.maxAttempts:
                RequestMetrics.effect(.dead)
                await settle(row) { try await self.store.deadLetter(row, error: why) }
                logger.warning(
                    "effect dead-lettered after its last attempt",
                    metadata: ["outbox_id": "\(row.id)", "function": "\(row.function)", "attempts": "\(row.attempts)",
                        "error": "\(why)"])
            case .retry(let why)?:
                let delay = backoff(attempt: row.attempts)
                RequestMetrics.effect(.retry)
                await settle(row) { try await self.store.retryLater(row, delayMs: delay, error: why) }
                logger.notice(
                    "effect failed; retrying",
                    metadata: ["outbox_id": "\(row.id)", "function": "\(row.function)", "attempt": "\(row.attempts)",
                        "retry_in_ms": "\(delay)", "error": "\(why)"])
            case .dead(let why)?:
                RequestMetrics.effect(.dead)
                await settle(row) { try await self.store.deadLetter(row, error: why) }
                logger.warning(
                    "effect dead-lettered", metadata: ["outbox_id": "\(row.id)", "function": "\(row.function)",
                        "error": "\(why)"])
            }
        }
        await settle(nil) { try await self.store.delete(done) }
        await settle(nil) { try await self.store.release(unstarted) }
    }

    /// Full jitter over an exponential ceiling: base × 2^(attempt-1), capped.
    private func backoff(attempt: Int) -> Int64 {
        let base = Int64(configuration.backoffBase.milliseconds)
        let ceiling = min(Int64(configuration.backoffCeiling.milliseconds), base << Int64(min(attempt - 1, 20)))
        return Int64.random(in: base / 2...max(base / 2, ceiling))
    }

    /// Writes a row's fate. When that fails, the lease still ends, and the row runs again (and replays).
    private func settle(_ row: OutboxRow?, _ body: () async throws -> Void) async {
        do {
            try await body()
        } catch {
            logger.warning(
                "could not record an effect's outcome; it runs again when its claim ends",
                metadata: ["outbox_id": "\(row?.id ?? "batch")", "error": "\(error)"])
        }
    }
}

/// A wake-up signal for a polling loop: `wait` returns at its timeout, or as soon as it is signalled. The waiter
/// sleeps (no timer ticks while idle); `signal` resumes it.
final class WakeUp: Sendable {
    private struct State {
        var signalled = false
        /// A signal for later: a timer committed here, due in a while.
        var dueAt: ContinuousClock.Instant?
        var waiter: CheckedContinuation<Void, Never>?
        /// Which wait the waiter belongs to, so that a late timeout never resumes a newer wait.
        var generation = 0
    }
    private let state = Mutex(State())

    func signal(afterMs delayMs: Int64 = 0) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if delayMs > 0 {
                let due = ContinuousClock.now.advanced(by: .milliseconds(delayMs))
                state.dueAt = min(state.dueAt ?? due, due)
                // The waiter is woken to shorten its sleep to the new due time.
            } else {
                state.signalled = true
            }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Waits up to `limit` (less, when a signalled due time comes sooner), or until signalled or cancelled.
    func wait(upTo limit: Duration, clock: ContinuousClock) async {
        let deadline = clock.now.advanced(by: limit)
        while !Task.isCancelled {
            let now = clock.now
            let (go, wake) = state.withLock { state -> (Bool, ContinuousClock.Instant) in
                if let due = state.dueAt, due <= now {
                    state.dueAt = nil
                    state.signalled = true
                }
                defer { state.signalled = false }
                return (state.signalled, min(deadline, state.dueAt ?? deadline))
            }
            if go || now >= deadline { return }
            await sleep(until: wake)
        }
    }

    /// Sleeps until `instant`, a signal, or cancellation, whichever comes first.
    private func sleep(until instant: ContinuousClock.Instant) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let (generation, resumeNow) = state.withLock { state -> (Int, Bool) in
                    // Signalled (or given an earlier due time) since `wait` looked, or cancelled: do not sleep.
                    guard !state.signalled, state.dueAt.map({ $0 >= instant }) ?? true, !Task.isCancelled else {
                        return (0, true)
                    }
                    state.generation += 1
                    state.waiter = continuation
                    return (state.generation, false)
                }
                if resumeNow {
                    continuation.resume()
                    return
                }
                Task {
                    try? await Task.sleep(until: instant, clock: .continuous)
                    self.resumeWaiter(ifGeneration: generation)
                }
            }
        } onCancel: {
            resumeWaiter(ifGeneration: nil)
        }
    }

    private func resumeWaiter(ifGeneration generation: Int?) {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard generation == nil || state.generation == generation else { return nil }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }
}
