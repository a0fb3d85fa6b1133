// The gateway's metrics (DESIGN.md section 7), through swift-metrics; the executable bootstraps the Prometheus
// backend and hands the gateway its exposition for `GET /metrics`. Every label value comes from a bounded set: a
// loaded function's name (anything else is "unknown"), an operation, a status code, an SQLSTATE. Never an entity.
import Metrics
import Synchronization
import StatefnPostgres
import StatefnWorkers

/// What kind of call a request was, as the `operation` label.
enum Operation: String, Sendable {
    case command, query, action, state, delete, events, list, functions, outbox, health, metrics, openapi, other
}

/// Per-request series: the count by function, operation and status, and the latency by function and operation.
/// Handles are made once per label set and kept, so a request costs two atomic updates and one histogram record,
/// not a registry lookup.
final class RequestMetrics: Sendable {
    private struct CountKey: Hashable {
        var function: String
        var operation: Operation
        var status: Int
    }
    private struct TimeKey: Hashable {
        var function: String
        var operation: Operation
    }
    private let counters = Mutex<[CountKey: Counter]>([:])
    private let timers = Mutex<[TimeKey: Metrics.Timer]>([:])
    private let workerTimers = Mutex<[String: Metrics.Timer]>([:])
    private let replayCounters = Mutex<[String: Counter]>([:])
    private let commitTimer = Metrics.Timer(label: "statefn_commit_duration_seconds")

    func request(function: String, _ operation: Operation, status: Int, elapsed: Duration) {
        let count = CountKey(function: function, operation: operation, status: status)
        let counter = counters.withLock { counters in
            if let counter = counters[count] { return counter }
            let counter = Counter(
                label: "statefn_requests_total",
                dimensions: [("function", function), ("operation", operation.rawValue), ("status", String(status))])
            counters[count] = counter
            return counter
        }
        counter.increment()
        let time = TimeKey(function: function, operation: operation)
        let timer = timers.withLock { timers in
            if let timer = timers[time] { return timer }
            let timer = Metrics.Timer(
                label: "statefn_request_duration_seconds",
                dimensions: [("function", function), ("operation", operation.rawValue)])
            timers[time] = timer
            return timer
        }
        timer.recordMilliseconds(elapsed.milliseconds)
    }

    /// One worker call, from hand-off to answer (the queue wait included).
    func worker(function: String, elapsed: Duration) {
        let timer = workerTimers.withLock { timers in
            if let timer = timers[function] { return timer }
            let timer = Metrics.Timer(label: "statefn_worker_duration_seconds", dimensions: [("function", function)])
            timers[function] = timer
            return timer
        }
        timer.recordMilliseconds(elapsed.milliseconds)
    }

    /// One commit transaction, its in-transaction retries included.
    func commit(elapsed: Duration) { commitTimer.recordMilliseconds(elapsed.milliseconds) }

    /// An answer replayed from an Idempotency-Key's stored record.
    func replay(function: String) {
        replayCounters.withLock { counters in
            if let counter = counters[function] { return counter }
            let counter = Counter(label: "statefn_idempotency_replays_total", dimensions: [("function", function)])
            counters[function] = counter
            return counter
        }.increment()
    }

    /// A commit that lost: `version` (another writer moved the entity first) or `not_landed` (the database failed
    /// it and it was read back as absent).
    static func conflict(_ reason: ConflictReason) { conflicts[reason]?.increment() }

    enum ConflictReason: String, CaseIterable { case version, notLanded = "not_landed" }

    /// An effect's run, by how it ended.
    static func effect(_ outcome: EffectResult) { effects[outcome]?.increment() }

    enum EffectResult: String, CaseIterable { case done, retry, dead }

    // Made on first use, which is after the executable bootstrapped the backend.
    private static let conflicts = Dictionary(uniqueKeysWithValues: ConflictReason.allCases.map {
        ($0, Counter(label: "statefn_commit_conflicts_total", dimensions: [("reason", $0.rawValue)]))
    })
    private static let effects = Dictionary(uniqueKeysWithValues: EffectResult.allCases.map {
        ($0, Counter(label: "statefn_effects_total", dimensions: [("outcome", $0.rawValue)]))
    })
}

/// Gauges read when Prometheus scrapes, rather than kept up to date on every change: the worker pools, the
/// database pool, the live event streams and the outbox.
final class ScrapeGauges: Sendable {
    /// Functions given pool gauges so far: one that went away reads 0, not its last value.
    private let reported = Mutex<Set<String>>([])
    /// The outbox's depth is a count over the table: read at most every few seconds, however often the scrapes.
    private let outboxDepth = Mutex<(read: ContinuousClock.Instant, depth: OutboxStore.Depth)?>(nil)
    static let outboxDepthMaxAge: Duration = .seconds(5)

    /// The outbox depth, read with `read` unless the last reading is recent enough.
    func outboxDepth(_ read: () async throws -> OutboxStore.Depth) async throws -> OutboxStore.Depth {
        let cached = outboxDepth.withLock { cached in
            cached.flatMap { ContinuousClock.now - $0.read < Self.outboxDepthMaxAge ? $0.depth : nil }
        }
        if let cached { return cached }
        let depth = try await read()
        outboxDepth.withLock { $0 = (ContinuousClock.now, depth) }
        return depth
    }

    func record(
        pools: [WorkerPoolStatus], known: [String], database: PostgresPool.Usage, subscribers: Int,
        outbox: OutboxStore.Depth?
    ) {
        var busy: [String: Int] = [:]
        var idle: [String: Int] = [:]
        var queued: [String: Int] = [:]
        let names = reported.withLock { reported in
            reported.formUnion(known)
            reported.formUnion(pools.map(\.function))
            return reported
        }
        for name in names { (busy[name], idle[name], queued[name]) = (0, 0, 0) }
        for pool in pools {
            busy[pool.function, default: 0] += pool.busy
            idle[pool.function, default: 0] += pool.idle
            queued[pool.function, default: 0] += pool.queued
        }
        for (function, count) in busy {
            Gauge(label: "statefn_workers", dimensions: [("function", function), ("state", "busy")]).record(count)
            Gauge(label: "statefn_workers", dimensions: [("function", function), ("state", "idle")])
                .record(idle[function] ?? 0)
            Gauge(label: "statefn_queue_depth", dimensions: [("function", function)]).record(queued[function] ?? 0)
        }
        Gauge(label: "statefn_db_connections", dimensions: [("state", "in_use")]).record(database.inUse)
        Gauge(label: "statefn_db_connections", dimensions: [("state", "idle")]).record(database.size - database.inUse)
        Gauge(label: "statefn_db_waiting").record(database.waiting)
        Gauge(label: "statefn_sse_subscribers").record(subscribers)
        if let outbox {
            Gauge(label: "statefn_outbox_depth", dimensions: [("state", "pending")]).record(outbox.pending)
            Gauge(label: "statefn_outbox_depth", dimensions: [("state", "dead")]).record(outbox.dead)
            Gauge(label: "statefn_outbox_lag_seconds").record(outbox.lagSeconds)
        }
    }
}
