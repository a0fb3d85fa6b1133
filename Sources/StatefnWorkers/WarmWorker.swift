// Warm mode (DESIGN.md section 3): a long-lived process reads request lines in a loop and answers each in order,
// one request in flight at a time. It may announce itself with {"ready":true} first; with `init_timeout_ms` set it
// must, within that time, before it gets a request. What it does when is `WarmWorkerStateMachine`; this is its
// I/O: the process, the timers and the pool.
import Glibc
import StatefnJSON

final class WarmWorker: @unchecked Sendable {  // confined to the event loop thread, but for `sendDirect`
    typealias Machine = WarmWorkerStateMachine<PendingRequest>

    let id: Int
    let process: WorkerProcess
    private let function: FunctionDefinition
    private let pool: WorkerPool
    private var machine: Machine
    private var deadline: EventLoop.Timer?
    private var initTimer: EventLoop.Timer?

    init(id: Int, function: FunctionDefinition, process: WorkerProcess, pool: WorkerPool) {
        self.id = id
        self.function = function
        self.process = process
        self.pool = pool
        machine = Machine(
            needsReadyLine: function.manifest.initTimeoutMs > 0, maxRequests: function.manifest.maxRequests)
        process.onLine = { line, truncated in self.received(line, truncated: truncated) }
        process.onStdoutClosed = {
            self.adoptDirectlySent(armDeadline: false)
            self.perform(self.machine.stdoutClosed())
        }
        process.onExit = { status in self.exited(status) }
    }

    var isAvailable: Bool {
        adoptDirectlySent(armDeadline: true)
        return machine.isIdle
    }

    /// Called once, right after spawning, with the first request or with nil for a worker started ahead of demand.
    func start(_ request: PendingRequest?) { perform(machine.start(request)) }

    func send(_ request: PendingRequest) { perform(machine.send(request)) }

    /// Any thread: writes `request` to the idle worker straight from the caller's thread if it can (see
    /// `WorkerProcess.writeDirect`). On success the loop thread takes it on with `adoptDirectlySent`, at the latest
    /// when the answer arrives.
    func sendDirect(_ request: PendingRequest) -> Bool {
        process.writeDirect(request, nowMs: WorkerPool.nowMs())
    }

    /// Takes on the request a caller wrote with `sendDirect`, if one is waiting, as `send` would have sent it; its
    /// deadline counts from the write. Called before anything that looks at the request in flight.
    func adoptDirectlySent(armDeadline: Bool) {
        guard let sent = process.takeDirectlySent() else { return }
        machine.sentDirectly(sent.request)
        syncProcessState()
        guard armDeadline else { return }
        let remaining = function.manifest.timeoutMs - (WorkerPool.nowMs() - sent.atMs)
        deadline = pool.loop.schedule(after: max(0, remaining)) { self.perform(self.machine.deadlinePassed()) }
    }

    /// The pool let it go (idle too long, or an old generation of the code).
    func stop() {
        adoptDirectlySent(armDeadline: true)
        perform(machine.stop())
    }

    // MARK: Events

    private func received(_ line: [UInt8], truncated: Bool) {
        // The answer is here, so a deadline for a request sent directly would only be cancelled again.
        adoptDirectlySent(armDeadline: false)
        let parsed = WorkerProtocol.parse(line, truncated: truncated, limit: process.stdoutLineLimit)
        let answer = machine.inFlight.map { WorkerProtocol.answer(parsed, to: $0.id) }
        let valid = if case .success = answer { true } else { false }
        let actions = machine.line(isReady: WorkerProtocol.isReady(parsed), validAnswer: valid, truncated: truncated)
        perform(actions, answer: answer, lineBytes: line.count)
    }

    private func exited(_ status: ExitStatus) {
        adoptDirectlySent(armDeadline: false)
        let key = WorkerIO.WarmKey(pool: WorkerPool.PoolKey(function), worker: id)
        pool.io.warm[key] = nil
        pool.idleWorkers.withLock { if $0[key] === self { $0[key] = nil } }
        pool.io.reaped(process)
        perform(
            machine.exited(clean: status.isCleanExit, forMemory: process.killedForMemory, stopping: pool.io.stopping),
            status: status)
    }

    // MARK: Carrying out the machine's actions

    /// `answer` is the line's, for the `.deliver` a line leads to; `status` the exit's, for the failures it leads to.
    private func perform(
        _ actions: [Machine.Action], answer: Result<JSONValue, WorkerError>? = nil, lineBytes: Int = 0,
        status: ExitStatus? = nil
    ) {
        for action in actions {
            switch action {
            case .send(let request):
                process.closeDoor()
                syncProcessState()
                process.send(request.line, thenClose: false)
                deadline = pool.loop.schedule(after: function.manifest.timeoutMs) {
                    self.perform(self.machine.deadlinePassed())
                }
            case .armInitTimer:
                initTimer = pool.loop.schedule(after: function.manifest.initTimeoutMs) {
                    self.perform(self.machine.initTimedOut())
                }
            case .cancelInitTimer:
                if let timer = initTimer { pool.loop.cancel(timer) }
                initTimer = nil
            case .cancelDeadline:
                if let timer = deadline { pool.loop.cancel(timer) }
                deadline = nil
            case .deliver(let request):
                let answer = answer ?? .failure(WorkerError(.invalidResponse, "no answer"))
                if case .failure(let error) = answer {
                    pool.logger.warning(
                        "replacing worker: \(error.detail)",
                        metadata: ["function": "\(function.name)", "pid": "\(process.pid)"])
                }
                pool.deliver(answer, to: request, lineBytes: lineBytes)
            case .fail(let request, let failure):
                request.finish(.failure(error(for: failure, status: status)))
            case .resubmit(let request):
                guard !request.retried else {
                    request.finish(.failure(error(for: .exited(forMemory: false), status: status)))
                    continue
                }
                var again = request
                again.retried = true
                pool.submit(again, to: function)
            case .becomeIdle(let answered):
                syncProcessState()
                process.openDoor()
                pool.workerFinished(id, of: function, answered: answered)
            case .retired(let crashed, let beforeServing, let outcome):
                pool.workerRetired(id, of: function, crashed: crashed, beforeServing: beforeServing, outcome: outcome)
            case .tearDown(let step):
                process.closeDoor()
                syncProcessState()
                process.tearDown(from: step)
            case .noteTimeout:
                pool.note(.timeout, of: function)
            case .noteRecycle:
                pool.note(.recycle, of: function)
            case .logViolation(let message):
                pool.logger.warning("\(message)", metadata: ["function": "\(function.name)", "pid": "\(process.pid)"])
            }
        }
    }

    /// What `GET /v1/functions` shows for the process.
    private func syncProcessState() {
        process.served = machine.served
        process.state =
            switch machine.state {
            case .starting: .starting
            case .idle: .idle
            case .busy: .busy
            case .retiring, .exited: .stopping
            }
    }

    private func error(for failure: Machine.Failure, status: ExitStatus?) -> WorkerError {
        let name = function.name
        return switch failure {
        case .notReady: WorkerError(.protocolViolation, "\(name): the worker did not start with {\"ready\":true}")
        case .initTimedOut:
            WorkerError(.crashed, "\(name): not ready within \(function.manifest.initTimeoutMs) ms (init_timeout_ms)")
        case .timedOut: .timedOut(function, pid: process.pid)
        case .shuttingDown: WorkerError(.shuttingDown, "the worker pool is stopping")
        case .exited(forMemory: true):
            WorkerError(
                .crashed,
                "\(name) worker \(process.pid) went over memory_mb (\(function.manifest.memoryMB)) and was killed")
        case .exited(forMemory: false):
            WorkerError(
                .crashed, "\(name) worker \(process.pid) \(status.map { "\($0)" } ?? "exited") without answering")
        }
    }
}
