// The pool of one function as pure state (postgres-nio's PoolStateMachine in spirit): which workers exist, which
// are idle and since when, which requests wait, in order, and how often workers have crashed lately. It does no
// I/O and reads no clock: each event carries `now`, and returns the action its owner carries out after releasing
// the lock, so tests drive it with a fake clock. Its crash-loop breaker measures failure, not volume: a worker that
// served and then died is replaced at once; the function is refused only when workers die before serving, or when
// most of its recent requests failed. Warm pools reuse idle workers; fork mode uses the same slots, one
// per process, and never reuses them.

struct PoolStateMachine<Request> {
    typealias WorkerID = Int
    /// Milliseconds on a monotonic clock.
    typealias Instant = Int

    enum Rejection: Equatable {
        case queueFull, queueTimedOut, shuttingDown
        /// A crash loop: refused until `retryAfterMs` from now.
        case unhealthy(retryAfterMs: Int, Unhealthy)
    }

    /// Why a function is refused for a cool-down.
    enum Unhealthy: Equatable {
        /// `CrashPolicy.loopCrashes` workers died before serving a request, within `CrashPolicy.loopWindowMs`.
        case startupCrashes
        /// Most of its recent requests failed (`CrashPolicy.failureRatio` of at least `minimumRequests`).
        case failingRequests(failed: Int, of: Int)
    }

    /// How the request a worker had ended, for the failure ratio: a crash, a broken answer or going over
    /// `memory_mb` is the function's failure; a refusal by the function itself is an answer, so a success here. A
    /// timeout is neither.
    enum Outcome: Equatable {
        case succeeded, failed
    }

    enum Action {
        case none
        /// Send the request to this idle worker.
        case run(Request, on: WorkerID)
        /// Start a new worker with this id and send it the request; with no request it starts ahead of demand
        /// (`min_workers`) and reports `workerFinished` once it is ready.
        case spawn(WorkerID, for: Request?)
        /// The request waits; fire `queueTimedOut(ticket)` when its queue timeout passes.
        case armQueueTimer(ticket: Int)
        case reject(Request, Rejection)
        /// Ask this worker, which the pool no longer counts, to finish and exit (idle too long, or its generation
        /// of the function's code is draining).
        case stop(WorkerID)
    }

    struct Counts: Equatable {
        var busy: Int
        var idle: Int
        var queued: Int
    }

    /// What `GET /v1/functions` shows besides the counts.
    struct Statistics: Equatable {
        var coldStarts = 0
        var crashes = 0
        var timeouts = 0
        var recycles = 0
    }

    struct Limits {
        var maxWorkers: Int
        var maxQueue: Int
        var minWorkers = 0
        /// 0 keeps idle workers forever.
        var idleTimeoutMs = 0
    }

    let limits: Limits
    var maxWorkers: Int { limits.maxWorkers }
    var maxQueue: Int { limits.maxQueue }
    private(set) var statistics = Statistics()
    private var busy: Set<WorkerID> = []
    /// The most recently used last: reusing it keeps its caches warm, and lets the others sit idle and expire.
    private var idle: [(worker: WorkerID, since: Instant)] = []
    private var queue: [(ticket: Int, request: Request)] = []
    private var nextWorker: WorkerID = 0
    private var nextTicket = 0
    private var shuttingDown = false
    private(set) var draining = false
    /// Start-up crash times inside the loop window, oldest first.
    private var recentCrashes: [Instant] = []
    /// The last `CrashPolicy.outcomeWindow` requests' outcomes, oldest first.
    private var outcomes: [(at: Instant, failed: Bool)] = []
    /// Crashes since the last good answer; each doubles the wait before the next spawn.
    private var consecutiveCrashes = 0
    private var spawnNotBefore: Instant = .min
    private(set) var unhealthyUntil: Instant?
    private(set) var unhealthyCause = Unhealthy.startupCrashes

    init(_ limits: Limits) {
        precondition(limits.maxWorkers >= 1, "a pool needs room for one worker")
        self.limits = limits
    }

    init(maxWorkers: Int, maxQueue: Int) {
        self.init(Limits(maxWorkers: maxWorkers, maxQueue: maxQueue))
    }

    var counts: Counts { Counts(busy: busy.count, idle: idle.count, queued: queue.count) }

    /// A draining pool with nothing left in it can be forgotten.
    var isFinished: Bool { draining && busy.isEmpty && idle.isEmpty && queue.isEmpty }

    mutating func request(_ request: Request, now: Instant = 0) -> Action {
        if shuttingDown || draining { return .reject(request, .shuttingDown) }
        if let until = unhealthyUntil {
            if now < until { return .reject(request, .unhealthy(retryAfterMs: until - now, unhealthyCause)) }
            recover()
        }
        if let (worker, _) = idle.popLast() {
            busy.insert(worker)
            return .run(request, on: worker)
        }
        if busy.count < maxWorkers && now >= spawnNotBefore { return .spawn(reserveWorker(), for: request) }
        guard queue.count < maxQueue else { return .reject(request, .queueFull) }
        nextTicket += 1
        queue.append((nextTicket, request))
        return .armQueueTimer(ticket: nextTicket)
    }

    /// A busy worker answered (or, with `answered` false, a worker started ahead of demand is ready) and can take
    /// another request.
    mutating func workerFinished(_ worker: WorkerID, answered: Bool = true, now: Instant = 0) -> Action {
        precondition(busy.contains(worker), "worker \(worker) finished a request it did not have")
        if answered { record(.succeeded, now: now) }
        // The code works: whatever crashed before does not hold back the next spawn.
        consecutiveCrashes = 0
        spawnNotBefore = .min
        if draining {
            busy.remove(worker)
            return .stop(worker)
        }
        if !queue.isEmpty { return .run(queue.removeFirst().request, on: worker) }
        busy.remove(worker)
        idle.append((worker, now))
        return .none
    }

    /// A worker is gone (it exited, broke the protocol, timed out, was recycled, or never started); its slot may
    /// serve the oldest waiting request. `outcome` is how the request it had, if any, ended. A crash before the
    /// worker served anything (`beforeServing`) delays the next spawn, and enough of them in a short time make
    /// the pool unhealthy; so does a majority of failed requests. Either way the waiting requests are refused.
    /// A worker that served and then crashed is only replaced.
    mutating func workerRetired(
        _ worker: WorkerID, crashed: Bool = false, beforeServing: Bool = true, outcome: Outcome? = nil,
        now: Instant = 0
    ) -> [Action] {
        if let outcome { record(outcome, now: now) }
        if crashed {
            statistics.crashes += 1
            if beforeServing { noteStartupCrash(now: now) }
        }
        if busy.remove(worker) == nil {
            guard let index = idle.firstIndex(where: { $0.worker == worker }) else {
                return refuseQueueIfUnhealthy(now: now)
            }
            idle.remove(at: index)
        }
        let refused = refuseQueueIfUnhealthy(now: now)
        if !refused.isEmpty || unhealthyUntil != nil { return refused }
        return spawnForWaiting(now: now)
    }


    mutating func queueTimedOut(ticket: Int) -> Action {
        guard let index = queue.firstIndex(where: { $0.ticket == ticket }) else { return .none }
        return .reject(queue.remove(at: index).request, .queueTimedOut)
    }

    /// Time passes: idle workers past `idle_timeout_ms` are stopped (down to `min_workers`), a cool-down ends,
    /// a crash backoff lapses so waiting requests get workers, and `min_workers` are started ahead of demand.
    mutating func tick(now: Instant) -> [Action] {
        if shuttingDown || draining { return [] }
        if let until = unhealthyUntil {
            guard now >= until else { return [] }
            recover()
        }
        var actions: [Action] = []
        if limits.idleTimeoutMs > 0 {
            while let oldest = idle.first, now - oldest.since >= limits.idleTimeoutMs,
                busy.count + idle.count > limits.minWorkers
            {
                idle.removeFirst()
                actions.append(.stop(oldest.worker))
            }
        }
        actions += spawnForWaiting(now: now)
        while now >= spawnNotBefore, busy.count + idle.count < min(limits.minWorkers, maxWorkers) {
            actions.append(.spawn(reserveWorker(), for: nil))
        }
        return actions
    }

    /// A timed-out request; the worker's retirement is reported separately.
    mutating func noteTimeout() { statistics.timeouts += 1 }
    /// A worker replaced on purpose: `max_requests` reached, over `memory_mb`, or an oversized answer.
    mutating func noteRecycle() { statistics.recycles += 1 }

    /// This generation of the function's code is replaced: idle workers stop now, busy ones when they finish,
    /// and the waiting requests are handed back to go to the new generation.
    mutating func drain() -> (stop: [WorkerID], waiting: [Request]) {
        draining = true
        let stopped = idle.map(\.worker)
        idle.removeAll()
        defer { queue.removeAll() }
        return (stopped, queue.map(\.request))
    }

    /// Refuses new requests from now on, and hands back the waiting ones to be refused too.
    mutating func shutdown() -> [Request] {
        shuttingDown = true
        defer { queue.removeAll() }
        return queue.map(\.request)
    }

    private mutating func reserveWorker() -> WorkerID {
        nextWorker += 1
        busy.insert(nextWorker)
        statistics.coldStarts += 1
        return nextWorker
    }

    private mutating func spawnForWaiting(now: Instant) -> [Action] {
        var actions: [Action] = []
        while !queue.isEmpty, !shuttingDown, !draining, now >= spawnNotBefore, busy.count < maxWorkers {
            actions.append(.spawn(reserveWorker(), for: queue.removeFirst().request))
        }
        return actions
    }

    private mutating func noteStartupCrash(now: Instant) {
        recentCrashes.append(now)
        recentCrashes.removeAll { now - $0 >= CrashPolicy.loopWindowMs }
        let backoff = min(
            CrashPolicy.firstBackoffMs << min(consecutiveCrashes, 16), CrashPolicy.maxBackoffMs)
        consecutiveCrashes += 1
        spawnNotBefore = now + backoff
        if recentCrashes.count >= CrashPolicy.loopCrashes, unhealthyUntil == nil {
            unhealthyUntil = now + CrashPolicy.coolDownMs
            unhealthyCause = .startupCrashes
        }
    }

    /// One more request's outcome in the window; a majority of failures among enough recent requests is a loop.
    private mutating func record(_ outcome: Outcome, now: Instant) {
        outcomes.append((now, outcome == .failed))
        if outcomes.count > CrashPolicy.outcomeWindow { outcomes.removeFirst(outcomes.count - CrashPolicy.outcomeWindow) }
        guard outcome == .failed, unhealthyUntil == nil else { return }
        let recent = outcomes.filter { now - $0.at < CrashPolicy.loopWindowMs }
        let failed = recent.count { $0.failed }
        if recent.count >= CrashPolicy.minimumRequests, Double(failed) > CrashPolicy.failureRatio * Double(recent.count) {
            unhealthyUntil = now + CrashPolicy.coolDownMs
            unhealthyCause = .failingRequests(failed: failed, of: recent.count)
        }
    }

    private mutating func refuseQueueIfUnhealthy(now: Instant) -> [Action] {
        guard let until = unhealthyUntil else { return [] }
        defer { queue.removeAll() }
        return queue.map { .reject($0.request, .unhealthy(retryAfterMs: until - now, unhealthyCause)) }
    }

    private mutating func recover() {
        unhealthyUntil = nil
        recentCrashes.removeAll()
        outcomes.removeAll()
        consecutiveCrashes = 0
        spawnNotBefore = .min
    }
}

/// When crashes become a crash loop, and what follows (PHP-FPM's emergency restart threshold in spirit, and a
/// circuit breaker's failure ratio over a window of requests).
enum CrashPolicy {
    /// Workers dying before they serve anything, within `loopWindowMs`.
    static let loopCrashes = 5
    /// The requests whose outcomes are weighed, the fewest that may trip the breaker, and the share of them
    /// that must have failed (more than half: a 2% crash rate never trips it).
    static let outcomeWindow = 20
    static let minimumRequests = 10
    static let failureRatio = 0.5
    static let loopWindowMs = 30_000
    static let coolDownMs = 30_000
    static let firstBackoffMs = 100
    static let maxBackoffMs = 5_000
}

extension PoolStateMachine.Action: Sendable where Request: Sendable {}
