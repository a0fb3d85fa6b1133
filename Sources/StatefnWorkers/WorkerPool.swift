// The public face of StatefnWorkers: invoke a function's worker and get its answer line back as JSON. Pool and
// queue state live in one PoolStateMachine per function under a lock; every process, pipe and timer lives on the
// event loop thread; async callers wait on continuations and never block the cooperative pool.
import Dispatch
import Glibc
import Logging
import Metrics
import StatefnJSON
import Synchronization

/// Runs function workers: a warm pool per function (JSON-lines processes, one request in flight each, from
/// `min_workers` up to `max_workers`, idle ones stopped after `idle_timeout_ms`), or one freshly spawned process per
/// request in fork mode. Every worker runs in its own process group under an RSS watch, a warm one in a memory cgroup
/// of its own where one is writable (`MemoryCgroups`), otherwise under RLIMIT_DATA; at the deadline the whole group
/// gets SIGTERM, then SIGKILL. stderr lines go to the logger, never to a client. Crashes
/// delay the next spawn, and a crash loop makes the function answer `unhealthy` for a cool-down. `update` swaps in
/// a rescanned functions directory: changed functions get fresh workers and the old generation drains.
public final class WorkerPool: Sendable {
    /// One pool per function revision: a changed executable or manifest gets a fresh pool.
    struct PoolKey: Hashable, Sendable {
        let name: String
        let executable: String
        let revision: String
        let manifest: FunctionManifest
        init(_ function: FunctionDefinition) {
            name = function.name
            executable = function.executable
            revision = function.revision
            manifest = function.manifest
        }
    }

    struct Entry {
        var function: FunctionDefinition
        var machine: PoolStateMachine<PendingRequest>
    }

    struct Pools: ~Copyable {
        var byKey: [PoolKey: Entry] = [:]
        /// The functions as last scanned, once `update` has run: a request for an older revision goes to the
        /// current one, and a request for a removed function is refused.
        var current: [String: FunctionDefinition]?
        var shuttingDown = false
    }

    /// What a worker's owner reports besides its comings and goings.
    enum Event {
        case timeout, recycle
    }

    /// How often idle workers, backoffs, cool-downs and `min_workers` are looked at.
    static let tickMs = 100
    /// The RSS watch runs every this many ticks.
    static let memoryCheckTicks = 5
    /// Orphans of workers are looked for every this many ticks, besides after every reap.
    static let orphanCheckTicks = 10
    /// Answers up to this size let their request go on on the I/O thread (`AnswerExecutor`).
    static let inlineAnswerBytes = 64 << 10

    let logger: Logger
    let loop: EventLoop
    let pools = Mutex(Pools())
    let io: WorkerIO
    /// Every warm worker, for writing a request to it straight from the caller's thread when the state machine
    /// picked it while idle (`WarmWorker.sendDirect`); the loop thread keeps it current.
    let idleWorkers = Mutex<[WorkerIO.WarmKey: WarmWorker]>([:])
    /// The executor request handlers prefer, so that they continue on the I/O thread after their answer.
    public let answerExecutor: AnswerExecutor
    /// Where warm workers' memory cgroups go, if a memory cgroup is writable here. Fork runs do not get one: a
    /// cgroup's mkdir, limits, attach and rmdir cost about 0.14 ms of CPU and 0.23 ms of wall time per process
    /// (bench/RESULTS.md), over half the gateway's own ~0.25 ms share of a fork run; RLIMIT_DATA and the RSS watch
    /// enforce their `memory_mb`.
    let memoryCgroups: MemoryCgroups?
    let watchStopped = Atomic<Bool>(false)
    /// Who workers run as and what they may touch (`WorkerSandbox`).
    let sandbox: SandboxPreparation

    public init(logger: Logger, sandbox: WorkerSandbox = WorkerSandbox()) {
        // Requests are written to worker pipes from callers' threads too; a worker that died must mean EPIPE there,
        // not the end of the process. (Workers get default dispositions back: `Spawner`.)
        signal(SIGPIPE, SIG_IGN)
        self.logger = logger
        loop = EventLoop()
        io = WorkerIO(loop: loop, logger: logger)
        io.reapsOrphans = sandbox.reapsOrphans
        self.sandbox = SandboxPreparation(sandbox)
        answerExecutor = AnswerExecutor(loop: loop)
        memoryCgroups = MemoryCgroups.open(logger: logger)
        loop.execute { [weak self] in self?.scheduleTick(count: 0) }
    }

    deinit {
        loop.stop()
    }

    /// Sends `request` (an object whose `"id"` is a string) to a worker of `function` and returns its answer: a JSON
    /// object whose `"id"` matched. Everything else becomes a `WorkerError`.
    public func invoke(_ function: FunctionDefinition, request: JSONValue) async throws(WorkerError) -> JSONValue {
        let (id, line) = try WorkerProtocol.requestLine(request, to: function)
        let result = await withCheckedContinuation { continuation in
            submit(PendingRequest(id: id, line: line, continuation: continuation), to: function)
        }
        return try result.get()
    }

    /// Hands `request` its worker's answer, from the I/O thread. A request with a large answer goes on in Swift's
    /// pool: encoding and committing it there holds up no other worker's I/O.
    func deliver(_ answer: Result<JSONValue, WorkerError>, to request: PendingRequest, lineBytes: Int) {
        loop.inlineResumes = lineBytes <= Self.inlineAnswerBytes
        request.finish(answer)
        loop.inlineResumes = false
    }

    /// Takes a rescanned functions directory: pools of changed or removed functions drain (requests in flight
    /// finish on the old workers, idle ones stop, waiting ones move to the new code), and `min_workers` of new
    /// and changed warm functions start ahead of demand.
    public func update(_ catalog: FunctionCatalog) {
        let now = Self.nowMs()
        struct Work: Sendable {
            var stops: [(FunctionDefinition, PoolStateMachine<PendingRequest>.Action)] = []
            var moved: [(FunctionDefinition, PendingRequest)] = []
        }
        let work = pools.withLock { pools -> Work in
            var work = Work()
            guard !pools.shuttingDown else { return work }
            pools.current = catalog.functions
            for key in Array(pools.byKey.keys) where !pools.byKey[key]!.machine.draining {
                guard catalog.functions[key.name].map(PoolKey.init) != key else { continue }
                let function = pools.byKey[key]!.function
                let (stop, waiting) = pools.byKey[key]!.machine.drain()
                work.stops += stop.map { (function, .stop($0)) }
                work.moved += waiting.map { (function, $0) }
                if pools.byKey[key]!.machine.isFinished { pools.byKey[key] = nil }
            }
            for function in catalog.functions.values where function.manifest.mode == .warm {
                guard function.manifest.minWorkers > 0 else { continue }
                let key = PoolKey(function)
                if pools.byKey[key] == nil {
                    pools.byKey[key] = Entry(function: function, machine: Self.machine(for: function))
                }
                work.stops += pools.byKey[key]!.machine.tick(now: now).map { (function, $0) }
            }
            return work
        }
        for (function, action) in work.stops { perform(action, for: function) }
        for (function, request) in work.moved { submit(request, to: function) }
    }

    /// Scans `directory` every `intervalMs` on the I/O thread (a few stat calls and small reads); on a change it
    /// calls `update` and then `onChange` with the new catalog. `initial` is the catalog already loaded.
    public func watchFunctions(
        directory: String, initial: FunctionCatalog, intervalMs: Int = 500,
        onChange: @escaping @Sendable (FunctionCatalog) -> Void
    ) {
        update(initial)
        loop.execute { [weak self] in
            self?.scheduleScan(directory: directory, last: initial, intervalMs: intervalMs, onChange: onChange)
        }
    }

    /// Ends `watchFunctions`' rescans; the catalog in force stays.
    public func stopWatching() { watchStopped.store(true, ordering: .releasing) }

    /// Stops every worker (SIGTERM to its group, a short grace, then SIGKILL) and reaps them.
    public func shutdown() async {
        let waiting = pools.withLock { pools in
            pools.shuttingDown = true
            var waiting: [PendingRequest] = []
            for key in pools.byKey.keys { waiting += pools.byKey[key]!.machine.shutdown() }
            return waiting
        }
        for request in waiting { request.finish(.failure(WorkerError(.shuttingDown, "the worker pool is stopping"))) }
        await withCheckedContinuation { continuation in
            loop.execute { self.io.stopAll(then: continuation) }
        }
        memoryCgroups?.removeAll()
    }

    /// What each function's pool holds right now, for `GET /v1/functions`, metrics and tests. A function whose
    /// code changed may show twice for a while: the draining old generation and the new one.
    public func status() async -> [WorkerPoolStatus] {
        let now = Self.nowMs()
        let entries = pools.withLock { pools in
            pools.byKey.map { key, entry in
                (
                    key, entry.machine.counts, entry.machine.statistics, entry.machine.draining,
                    entry.machine.unhealthyUntil.map { max(0, $0 - now) }
                )
            }
        }
        let workers = await withCheckedContinuation { continuation in
            loop.execute { continuation.resume(returning: self.io.workersByPool()) }
        }
        return entries.map { key, counts, statistics, draining, unhealthyForMs in
            let live = workers[key, default: []].sorted { $0.pid < $1.pid }
            return WorkerPoolStatus(
                function: key.name, mode: key.manifest.mode, busy: counts.busy, idle: counts.idle,
                queued: counts.queued, pids: live.map(\.pid), revision: key.revision, draining: draining,
                unhealthyForMs: unhealthyForMs, workers: live, coldStarts: statistics.coldStarts,
                crashes: statistics.crashes, timeouts: statistics.timeouts, recycles: statistics.recycles)
        }.sorted { ($0.function, $0.draining ? 0 : 1) < ($1.function, $1.draining ? 0 : 1) }
    }

    // MARK: Driving the state machines

    /// One more of a per-function event (a start, a crash, a timeout, a recycle) in the metrics.
    private static func count(_ label: String, _ function: FunctionDefinition) {
        Counter(label: label, dimensions: [("function", function.name)]).increment()
    }

    static func nowMs() -> Int { Int(monotonicNanoseconds() / 1_000_000) }

    static func machine(for function: FunctionDefinition) -> PoolStateMachine<PendingRequest> {
        let manifest = function.manifest
        let warm = manifest.mode == .warm
        return PoolStateMachine(
            PoolStateMachine.Limits(
                maxWorkers: manifest.maxWorkers, maxQueue: manifest.maxQueue,
                minWorkers: warm ? manifest.minWorkers : 0,
                idleTimeoutMs: warm ? manifest.idleTimeoutMs : 0))
    }

    func submit(_ request: PendingRequest, to function: FunctionDefinition) {
        let now = Self.nowMs()
        let (action, target) = pools.withLock {
            pools -> (PoolStateMachine<PendingRequest>.Action?, FunctionDefinition) in
            if pools.shuttingDown { return (.reject(request, .shuttingDown), function) }
            var target = function
            if let current = pools.current {
                guard let latest = current[function.name] else { return (nil, function) }
                target = latest
            }
            let key = PoolKey(target)
            if pools.byKey[key] == nil {
                pools.byKey[key] = Entry(function: target, machine: Self.machine(for: target))
            }
            return (pools.byKey[key]!.machine.request(request, now: now), target)
        }
        guard let action else {
            return request.finish(.failure(WorkerError(.removed, "function \(function.name) was removed")))
        }
        perform(action, for: target)
    }

    /// A warm worker answered (`answered`), or started and is ready, and may take the next request.
    func workerFinished(_ worker: Int, of function: FunctionDefinition, answered: Bool) {
        let key = PoolKey(function)
        let now = Self.nowMs()
        perform(
            pools.withLock { $0.byKey[key]?.machine.workerFinished(worker, answered: answered, now: now) ?? .none },
            for: function)
    }

    /// A worker is gone or going; its slot is free. `outcome` is how the request it had ended, if it had one. A
    /// crash before it served anything counts towards backoff and the crash loop; one after is only replaced.
    func workerRetired(
        _ worker: Int, of function: FunctionDefinition, crashed: Bool = false, beforeServing: Bool = true,
        outcome: PoolStateMachine<PendingRequest>.Outcome? = nil
    ) {
        let key = PoolKey(function)
        let now = Self.nowMs()
        if crashed {
            logger.warning(
                beforeServing ? "worker crashed before serving a request" : "worker crashed; replaced at once",
                metadata: ["function": "\(function.name)"])
            Self.count("statefn_worker_crashes_total", function)
        }
        let actions = pools.withLock {
            $0.byKey[key]?.machine.workerRetired(
                worker, crashed: crashed, beforeServing: beforeServing, outcome: outcome, now: now) ?? []
        }
        for action in actions { perform(action, for: function) }
    }

    func note(_ event: Event, of function: FunctionDefinition) {
        switch event {
        case .timeout: Self.count("statefn_worker_timeouts_total", function)
        case .recycle: Self.count("statefn_worker_recycles_total", function)
        }
        let key = PoolKey(function)
        pools.withLock { pools in
            switch event {
            case .timeout: pools.byKey[key]?.machine.noteTimeout()
            case .recycle: pools.byKey[key]?.machine.noteRecycle()
            }
        }
    }

    /// Carries out an action outside the lock. Work for the loop is queued even from the loop thread, so a worker
    /// reporting an event never re-enters itself; a spawn goes to the spawn threads at once.
    private func perform(_ action: PoolStateMachine<PendingRequest>.Action, for function: FunctionDefinition) {
        switch action {
        case .none:
            return
        case .reject(let request, let rejection):
            request.finish(.failure(error(for: rejection, of: function)))
        case .armQueueTimer(let ticket):
            loop.execute {
                _ = self.loop.schedule(after: function.manifest.queueTimeoutMs) {
                    let key = PoolKey(function)
                    self.perform(
                        self.pools.withLock { $0.byKey[key]?.machine.queueTimedOut(ticket: ticket) ?? .none },
                        for: function)
                }
            }
        case .run(let request, let worker):
            // One hop fewer when the worker is idle and the line fits the pipe at once: the loop thread then only
            // takes the request on, when the answer arrives or a tick or other event wakes it, whichever is first.
            let key = WorkerIO.WarmKey(pool: PoolKey(function), worker: worker)
            if let warm = idleWorkers.withLock({ $0[key] }), warm.sendDirect(request) {
                loop.executeQuietly { warm.adoptDirectlySent(armDeadline: true) }
                return
            }
            loop.execute { self.run(request, on: worker, of: function) }
        case .spawn(let worker, let request):
            Self.count("statefn_worker_starts_total", function)
            start(worker, of: function, with: request)
        case .stop(let worker):
            loop.execute { self.io.warm[WorkerIO.WarmKey(pool: PoolKey(function), worker: worker)]?.stop() }
        }
    }

    private func error(for rejection: PoolStateMachine<PendingRequest>.Rejection, of function: FunctionDefinition)
        -> WorkerError
    {
        switch rejection {
        case .queueFull:
            WorkerError(
                .queueFull,
                "\(function.name): all \(function.manifest.maxWorkers) workers busy and "
                    + "\(function.manifest.maxQueue) requests waiting", retryAfterSeconds: 1)
        case .queueTimedOut:
            WorkerError(
                .queueFull, "\(function.name): no worker free within \(function.manifest.queueTimeoutMs) ms",
                retryAfterSeconds: 1)
        case .shuttingDown:
            WorkerError(.shuttingDown, "the worker pool is stopping")
        case .unhealthy(let retryAfterMs, let cause):
            WorkerError(
                .unhealthy,
                "\(function.name): \(cause.text); refused until its files change or the cool-down ends",
                retryAfterSeconds: max(1, (retryAfterMs + 999) / 1000))
        }
    }

    // MARK: Loop thread (but `start`)

    private func scheduleTick(count: Int) {
        _ = loop.schedule(after: Self.tickMs) { [weak self] in
            guard let self, !self.io.stopping else { return }
            self.tick(count: count)
            self.scheduleTick(count: count + 1)
        }
    }

    private func tick(count: Int) {
        let now = Self.nowMs()
        let work = pools.withLock { pools -> [(FunctionDefinition, PoolStateMachine<PendingRequest>.Action)] in
            var work: [(FunctionDefinition, PoolStateMachine<PendingRequest>.Action)] = []
            for key in Array(pools.byKey.keys) {
                let function = pools.byKey[key]!.function
                work += pools.byKey[key]!.machine.tick(now: now).map { (function, $0) }
                if pools.byKey[key]!.machine.isFinished { pools.byKey[key] = nil }
            }
            return work
        }
        for (function, action) in work { perform(action, for: function) }
        if count % Self.memoryCheckTicks == 0 { io.enforceMemoryLimits() }
        if count % Self.orphanCheckTicks == 0 { io.collectOrphans() }
    }

    private func scheduleScan(
        directory: String, last: FunctionCatalog, intervalMs: Int,
        onChange: @escaping @Sendable (FunctionCatalog) -> Void
    ) {
        _ = loop.schedule(after: intervalMs) { [weak self] in
            guard let self, !self.io.stopping, !self.watchStopped.load(ordering: .acquiring) else { return }
            let scanned = FunctionCatalog.scan(directory: directory)
            if scanned != last {
                self.update(scanned)
                onChange(scanned)
            }
            self.scheduleScan(directory: directory, last: scanned, intervalMs: intervalMs, onChange: onChange)
        }
    }

    private func run(_ request: PendingRequest, on worker: Int, of function: FunctionDefinition) {
        guard let warm = io.warm[WorkerIO.WarmKey(pool: PoolKey(function), worker: worker)], warm.isAvailable else {
            // It died between the state machine's choice and now, before this request reached it: try again.
            workerRetired(worker, of: function)
            submit(request, to: function)
            return
        }
        warm.send(request)
    }

    /// A process just spawned, on its way to the loop thread: what the spawn thread already did for it.
    struct Launch: Sendable {
        var spawned: SpawnedProcess
        var watches: WorkerProcess.Watches
        /// How much of a fork run's request line the spawn thread wrote (`SpawnedProcess.writeFirstLine`).
        var requestBytesWritten: Int
        /// When the spawn began (`monotonicNanoseconds`): a fork run's deadline counts from here.
        var began: UInt64
    }

    /// Spawns on a spawn thread, straight from the thread that asked: a spawn blocks its caller until the child
    /// has exec'd, and a burst of fork runs would otherwise stall every worker's I/O behind it. The spawn thread
    /// also writes a fork run's request and puts the pipes in epoll, so the loop thread first hears of a fork run
    /// when its answer (or its exit) arrives, and is not woken for it before (`EventLoop.watchFromAnyThread`).
    private func start(_ worker: Int, of function: FunctionDefinition, with request: PendingRequest?) {
        let admitted = io.spawnGate.withLock { gate in
            guard !gate.closed else { return false }
            gate.pending += 1
            return true
        }
        guard admitted else {
            return loop.execute {
                request?.finish(.failure(WorkerError(.shuttingDown, "the worker pool is stopping")))
                self.workerRetired(worker, of: function)
            }
        }
        SpawnThreads.shared.submit {
            let began = monotonicNanoseconds()
            var spawned: SpawnedProcess
            do throws(WorkerError) {
                spawned = try Spawner.spawn(
                    function, cgroups: function.manifest.mode == .warm ? self.memoryCgroups : nil,
                    sandbox: self.sandbox)
            } catch {
                return self.loop.execute { self.started(worker, of: function, with: request, .failure(error)) }
            }
            var written = 0
            var quiet = false
            if function.manifest.mode == .fork, let request {
                written = spawned.writeFirstLine(request.line, thenClose: true)
                // Nothing to do before the process answers or exits, unless its deadline falls before the next
                // tick could bring it in, or the pool is stopping (and ticks no more).
                quiet =
                    written == request.line.count && function.manifest.timeoutMs > Self.tickMs
                    && !self.io.spawnGate.withLock { $0.closed }
            }
            WorkerProcess.Watches.add(spawned, to: self.loop, wake: !quiet) { [spawned, written] watches in
                let launch = Launch(spawned: spawned, watches: watches, requestBytesWritten: written, began: began)
                self.started(worker, of: function, with: request, .success(launch))
            }
        }
    }

    private func started(
        _ worker: Int, of function: FunctionDefinition, with request: PendingRequest?,
        _ launched: Result<Launch, WorkerError>
    ) {
        io.spawnGate.withLock { $0.pending -= 1 }
        let launch: Launch
        switch launched {
        case .failure(let error):
            logger.error("cannot start worker: \(error.detail)", metadata: ["function": "\(function.name)"])
            request?.finish(.failure(error))
            workerRetired(worker, of: function, crashed: !io.stopping, outcome: request.map { _ in .failed })
            io.spawnSettled()
            return
        case .success(let success):
            launch = success
        }
        let process = WorkerProcess(launch.spawned, watches: launch.watches, of: function, loop: loop, logger: logger)
        let key = PoolKey(function)
        io.started(process, in: key)
        if io.stopping {
            // The pool stopped while this one was starting: end it; its reaping completes the stop.
            process.tearDown(from: .kill)
            request?.finish(.failure(WorkerError(.shuttingDown, "the worker pool is stopping")))
            return
        }
        switch function.manifest.mode {
        case .warm:
            let warm = WarmWorker(id: worker, function: function, process: process, pool: self)
            io.warm[WorkerIO.WarmKey(pool: key, worker: worker)] = warm
            idleWorkers.withLock { $0[WorkerIO.WarmKey(pool: key, worker: worker)] = warm }
            warm.start(request)
        case .fork:
            guard let request else {
                // Fork pools never start ahead of demand (their min_workers is 0); end the stray process.
                process.tearDown(from: .kill)
                return
            }
            ForkRun(slot: worker, function: function, process: process, pool: self)
                .start(request, alreadyWritten: launch.requestBytesWritten, began: launch.began)
        }
    }
}

/// A function's pool as `WorkerPool.status()` reports it.
public struct WorkerPoolStatus: Sendable, Hashable {
    public var function: String
    public var mode: WorkerMode
    public var busy: Int
    public var idle: Int
    public var queued: Int
    /// Live worker processes, each the leader of its own process group.
    public var pids: [Int32]
    /// The code this pool runs (`FunctionDefinition.revision`).
    public var revision: String = ""
    /// An old generation: its requests in flight finish, then it goes.
    public var draining = false
    /// In a crash loop: refused for this much longer.
    public var unhealthyForMs: Int?
    public var workers: [WorkerStatus] = []
    public var coldStarts = 0
    public var crashes = 0
    public var timeouts = 0
    public var recycles = 0
}

/// One live worker process.
public struct WorkerStatus: Sendable, Hashable {
    public var pid: Int32
    /// starting, idle, busy or stopping.
    public var state: String
    public var requestsServed: Int
    public var residentBytes: Int
}

/// A request on its way to a worker, with the caller waiting on it. Whoever holds it finishes it exactly once.
struct PendingRequest: Sendable {
    let id: String
    let line: [UInt8]
    let continuation: CheckedContinuation<Result<JSONValue, WorkerError>, Never>
    /// Sent once more after a worker left cleanly without reading it; never twice.
    var retried = false

    func finish(_ result: Result<JSONValue, WorkerError>) { continuation.resume(returning: result) }
}

extension PoolStateMachine.Unhealthy {
    var text: String {
        switch self {
        case .startupCrashes:
            "\(CrashPolicy.loopCrashes) workers crashed before serving within \(CrashPolicy.loopWindowMs / 1000) s"
        case .failingRequests(let failed, let total):
            "\(failed) of its last \(total) requests failed (crashed, answered wrongly or went over memory_mb)"
        }
    }
}
