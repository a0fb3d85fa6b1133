// The public face of StatefnWorkers: invoke a function's worker and get its answer line back as JSON. Pool and
// queue state live in one PoolStateMachine per function under a lock; every process, pipe and timer lives on the
// event loop thread; async callers wait on continuations and never block the cooperative pool.
import Logging
import StatefnJSON
import Synchronization

/// Runs function workers: a warm pool per function (JSON-lines processes, one request in flight each, up to
/// `max_workers`), or one `posix_spawn`ed process per request in fork mode. Every worker runs in its own process
/// group; at the deadline the whole group is killed. stderr lines go to the logger, never to a client.
///
/// Not done yet: idle workers are never reaped (`idle_timeout_ms`), `min_workers` are not started ahead of demand,
/// and `memory_mb` is not enforced.
public final class WorkerPool: Sendable {
    /// One pool per function, executable and manifest: a changed manifest gets a fresh pool.
    struct PoolKey: Hashable, Sendable {
        let name: String
        let executable: String
        let manifest: FunctionManifest
        init(_ function: FunctionDefinition) {
            name = function.name
            executable = function.executable
            manifest = function.manifest
        }
    }

    struct Pools: ~Copyable {
        var byKey: [PoolKey: PoolStateMachine<PendingRequest>] = [:]
        var shuttingDown = false
    }

    let logger: Logger
    let loop: EventLoop
    let pools = Mutex(Pools())
    let io: WorkerIO

    public init(logger: Logger) {
        self.logger = logger
        loop = EventLoop()
        io = WorkerIO(loop: loop, logger: logger)
    }

    deinit {
        loop.stop()
    }

    /// Sends `request` (an object whose `"id"` is a string) to a worker of `function` and returns its answer: a JSON
    /// object whose `"id"` matched. Everything else becomes a `WorkerError`.
    public func invoke(_ function: FunctionDefinition, request: JSONValue) async throws(WorkerError) -> JSONValue {
        guard let id = request["id"]?.stringValue else {
            throw WorkerError(.protocolViolation, "the request to \(function.name) has no string id")
        }
        var line = request.encoded()
        line.append(0x0A)
        let result = await withCheckedContinuation { continuation in
            submit(PendingRequest(id: id, line: line, continuation: continuation), to: function)
        }
        return try result.get()
    }

    /// Stops every worker (SIGTERM to its group, a short grace, then SIGKILL) and reaps them.
    public func shutdown() async {
        let waiting = pools.withLock { pools in
            pools.shuttingDown = true
            var waiting: [PendingRequest] = []
            for key in pools.byKey.keys { waiting += pools.byKey[key]!.shutdown() }
            return waiting
        }
        for request in waiting { request.finish(.failure(WorkerError(.shuttingDown, "the worker pool is stopping"))) }
        await withCheckedContinuation { continuation in
            loop.execute { self.io.stopAll(then: continuation) }
        }
    }

    /// What each function's pool holds right now, for `GET /v1/functions`, metrics and tests.
    public func status() async -> [WorkerPoolStatus] {
        let counts = pools.withLock { pools in pools.byKey.mapValues(\.counts) }
        let pids = await withCheckedContinuation { continuation in
            loop.execute { continuation.resume(returning: self.io.pidsByPool()) }
        }
        return counts.map { key, counts in
            WorkerPoolStatus(
                function: key.name, mode: key.manifest.mode, busy: counts.busy, idle: counts.idle,
                queued: counts.queued, pids: pids[key, default: []].sorted())
        }.sorted { $0.function < $1.function }
    }

    // MARK: Driving the state machines

    func submit(_ request: PendingRequest, to function: FunctionDefinition) {
        let key = PoolKey(function)
        let action = pools.withLock { pools -> PoolStateMachine<PendingRequest>.Action in
            if pools.shuttingDown { return .reject(request, .shuttingDown) }
            let manifest = function.manifest
            return pools.byKey[key, default: PoolStateMachine(maxWorkers: manifest.maxWorkers, maxQueue: manifest.maxQueue)]
                .request(request)
        }
        perform(action, for: function)
    }

    /// A warm worker answered and may take the next request.
    func workerFinished(_ worker: Int, of function: FunctionDefinition) {
        let key = PoolKey(function)
        perform(pools.withLock { $0.byKey[key]?.workerFinished(worker) ?? .none }, for: function)
    }

    /// A worker is gone or going; its slot is free.
    func workerRetired(_ worker: Int, of function: FunctionDefinition) {
        let key = PoolKey(function)
        perform(pools.withLock { $0.byKey[key]?.workerRetired(worker) ?? .none }, for: function)
    }

    /// Carries out an action outside the lock. Work for the loop is queued even from the loop thread, so a worker
    /// reporting an event never re-enters itself.
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
                    self.perform(self.pools.withLock { $0.byKey[key]?.queueTimedOut(ticket: ticket) ?? .none }, for: function)
                }
            }
        case .run(let request, let worker):
            loop.execute { self.run(request, on: worker, of: function) }
        case .spawn(let worker, let request):
            loop.execute { self.start(worker, of: function, with: request) }
        }
    }

    private func error(for rejection: PoolStateMachine<PendingRequest>.Rejection, of function: FunctionDefinition)
        -> WorkerError
    {
        switch rejection {
        case .queueFull:
            WorkerError(.queueFull, "\(function.name): all \(function.manifest.maxWorkers) workers busy and "
                + "\(function.manifest.maxQueue) requests waiting")
        case .queueTimedOut:
            WorkerError(.queueFull, "\(function.name): no worker free within \(function.manifest.queueTimeoutMs) ms")
        case .shuttingDown:
            WorkerError(.shuttingDown, "the worker pool is stopping")
        }
    }

    // MARK: Loop thread

    private func run(_ request: PendingRequest, on worker: Int, of function: FunctionDefinition) {
        guard let warm = io.warm[WorkerIO.WarmKey(pool: PoolKey(function), worker: worker)], warm.isAvailable else {
            // It died between the state machine's choice and now, before this request reached it: try again.
            workerRetired(worker, of: function)
            submit(request, to: function)
            return
        }
        warm.send(request)
    }

    private func start(_ worker: Int, of function: FunctionDefinition, with request: PendingRequest) {
        let process: WorkerProcess
        do throws(WorkerError) {
            guard !io.stopping else { throw WorkerError(.shuttingDown, "the worker pool is stopping") }
            process = try WorkerProcess(spawning: function, loop: loop, logger: logger)
        } catch {
            logger.error("cannot start worker: \(error.detail)", metadata: ["function": "\(function.name)"])
            request.finish(.failure(error))
            workerRetired(worker, of: function)
            return
        }
        let key = PoolKey(function)
        io.started(process, in: key)
        switch function.manifest.mode {
        case .warm:
            let warm = WarmWorker(id: worker, function: function, process: process, pool: self)
            let warmKey = WorkerIO.WarmKey(pool: key, worker: worker)
            io.warm[warmKey] = warm
            warm.send(request)
        case .fork:
            ForkRun(slot: worker, function: function, process: process, pool: self).start(request)
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
}

/// A request on its way to a worker, with the caller waiting on it. Whoever holds it finishes it exactly once.
struct PendingRequest: Sendable {
    let id: String
    let line: [UInt8]
    let continuation: CheckedContinuation<Result<JSONValue, WorkerError>, Never>

    func finish(_ result: Result<JSONValue, WorkerError>) { continuation.resume(returning: result) }
}

/// Checks one answer line against DESIGN.md section 3: a JSON object carrying the request's id.
func decodeAnswer(_ line: [UInt8], to requestID: String) -> Result<JSONValue, WorkerError> {
    let answer: JSONValue
    do {
        answer = try JSONValue.parse(line, limits: .worker)
    } catch {
        let excerpt = String(decoding: line.prefix(200), as: UTF8.self)
        return .failure(WorkerError(.invalidResponse, "the answer is not JSON (\(error)): \(excerpt)"))
    }
    guard case .object(let object) = answer else {
        return .failure(WorkerError(.invalidResponse, "the answer is not a JSON object"))
    }
    guard object["id"]?.stringValue == requestID else {
        let id = object["id"]?.encodedString() ?? "no id"
        return .failure(WorkerError(.protocolViolation, "answered \(id) to request \"\(requestID)\""))
    }
    return .success(answer)
}

/// `{"ready":true}`, the optional first line of a warm worker. Fork mode skips it too, so one SDK serves both.
func isReadyLine(_ line: [UInt8]) -> Bool {
    guard line.first == UInt8(ascii: "{"), let value = try? JSONValue.parse(line, limits: .worker) else { return false }
    return value["ready"] == .bool(true) && value["id"] == nil
}
