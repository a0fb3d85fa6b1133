// Warm mode (DESIGN.md section 3): a long-lived process reads request lines in a loop and answers each in order,
// one request in flight at a time. It may announce itself with {"ready":true} first; with `init_timeout_ms` set it
// must, within that time, before it gets a request.
import Glibc

final class WarmWorker: @unchecked Sendable {  // confined to the event loop thread, but for `sendDirect`
    /// How long a worker asked to finish (stdin closed) gets before SIGKILL.
    static let recycleGraceMs = 2_000

    let id: Int
    let process: WorkerProcess
    private let function: FunctionDefinition
    private let pool: WorkerPool
    /// The request sent and not yet answered.
    private var current: PendingRequest?
    /// The first request, held until the worker says it is ready.
    private var waitingForReady: PendingRequest?
    private var ready: Bool
    private var deadline: EventLoop.Timer?
    private var initTimer: EventLoop.Timer?
    private var sawFirstLine = false
    /// The pool no longer counts it: it is ending, by its own doing or ours.
    private var retired = false

    init(id: Int, function: FunctionDefinition, process: WorkerProcess, pool: WorkerPool) {
        self.id = id
        self.function = function
        self.process = process
        self.pool = pool
        ready = function.manifest.initTimeoutMs == 0
        process.onLine = { line, truncated in self.received(line, truncated: truncated) }
        process.onStdoutClosed = { self.stdoutClosed() }
        process.onExit = { status in self.exited(status) }
    }

    var isAvailable: Bool {
        adoptDirectlySent(armDeadline: true)
        return !retired && ready && current == nil
    }

    /// Called once, right after spawning, with the first request or with nil for a worker started ahead of demand.
    func start(_ request: PendingRequest?) {
        guard !ready else {
            if let request { send(request) } else { becomeIdle(answered: false) }
            return
        }
        waitingForReady = request
        initTimer = pool.loop.schedule(after: function.manifest.initTimeoutMs) { self.initTimedOut() }
    }

    func send(_ request: PendingRequest) {
        precondition(isAvailable, "worker \(process.pid) of \(function.name) got a request while unavailable")
        process.closeDoor()
        current = request
        process.served += 1
        process.state = .busy
        process.send(request.line, thenClose: false)
        deadline = pool.loop.schedule(after: function.manifest.timeoutMs) { self.timedOut() }
    }

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
        current = sent.request
        process.served += 1
        process.state = .busy
        guard armDeadline else { return }
        let remaining = function.manifest.timeoutMs - (WorkerPool.nowMs() - sent.atMs)
        deadline = pool.loop.schedule(after: max(0, remaining)) { self.timedOut() }
    }

    /// The pool let it go (idle too long, or an old generation of the code): closing stdin ends its read loop.
    func stop() {
        retired = true
        retiredOnPurpose = true
        process.state = .stopping
        process.closeStdin()
        _ = pool.loop.schedule(after: Self.recycleGraceMs) { self.process.signalGroup(SIGKILL) }
    }

    // MARK: Events

    private func received(_ line: [UInt8], truncated: Bool) {
        // The answer is here, so a deadline for a request sent directly would only be cancelled again.
        adoptDirectlySent(armDeadline: false)
        let parsed = parseLine(line, truncated: truncated, limit: process.stdoutLineLimit)
        if !sawFirstLine {
            sawFirstLine = true
            if isReadyLine(parsed) { return becomeReady() }
        }
        guard ready, let request = current else {
            pool.logger.warning(
                ready ? "worker wrote a line with no request in flight; replacing it"
                    : "worker wrote something other than {\"ready\":true} first; replacing it",
                metadata: ["function": "\(function.name)", "pid": "\(process.pid)"])
            let hadRequest = waitingForReady != nil
            failStart(WorkerError(.protocolViolation, "\(function.name): the worker did not start with {\"ready\":true}"))
            return retire(.kill, outcome: hadRequest ? .failed : nil)
        }
        current = nil
        cancelDeadline()
        let answer = checkAnswer(parsed, to: request.id)
        if case .failure(let error) = answer {
            pool.logger.warning(
                "replacing worker: \(error.detail)", metadata: ["function": "\(function.name)", "pid": "\(process.pid)"])
            if truncated { pool.note(.recycle, of: function) }
            retire(.kill, outcome: .failed)
        } else if function.manifest.maxRequests > 0 && process.served >= function.manifest.maxRequests {
            pool.note(.recycle, of: function)
            retire(.closeStdin, outcome: .succeeded)
        } else {
            becomeIdle(answered: true)
        }
        pool.deliver(answer, to: request, lineBytes: line.count)
    }

    private func becomeReady() {
        guard !ready else { return }
        ready = true
        if let timer = initTimer { pool.loop.cancel(timer) }
        initTimer = nil
        if let request = waitingForReady {
            waitingForReady = nil
            send(request)
        } else {
            becomeIdle(answered: false)
        }
    }

    /// Ready for a request: after answering one (`answered`), or once started.
    private func becomeIdle(answered: Bool) {
        process.state = .idle
        process.openDoor()
        pool.workerFinished(id, of: function, answered: answered)
    }

    private func initTimedOut() {
        initTimer = nil
        guard !ready, !retired else { return }
        pool.logger.warning(
            "worker did not print {\"ready\":true} within init_timeout_ms; killing it",
            metadata: ["function": "\(function.name)", "pid": "\(process.pid)"])
        let hadRequest = waitingForReady != nil
        failStart(
            WorkerError(.crashed, "\(function.name): not ready within \(function.manifest.initTimeoutMs) ms (init_timeout_ms)"))
        retire(.kill, crashed: true, outcome: hadRequest ? .failed : nil)
    }

    private func failStart(_ error: WorkerError) {
        guard let request = waitingForReady else { return }
        waitingForReady = nil
        request.finish(.failure(error))
    }

    private func timedOut() {
        deadline = nil
        guard let request = current else { return }
        current = nil
        pool.note(.timeout, of: function)
        retire(.terminate, outcome: .failed)
        request.finish(.failure(.timedOut(function, pid: process.pid)))
    }

    /// It closed stdout: no answer can come any more. It gets a moment to exit on its own, which tells a clean
    /// exit (a worker that serves one request and leaves) from a crash.
    private func stdoutClosed() {
        retire(.leave)
    }

    private func exited(_ status: ExitStatus) {
        adoptDirectlySent(armDeadline: false)
        cancelDeadline()
        if let timer = initTimer { pool.loop.cancel(timer) }
        initTimer = nil
        let key = WorkerIO.WarmKey(pool: WorkerPool.PoolKey(function), worker: id)
        pool.io.warm[key] = nil
        pool.idleWorkers.withLock { if $0[key] === self { $0[key] = nil } }
        pool.io.reaped(process)
        let stopping = pool.io.stopping
        let request = current ?? waitingForReady
        let answered = process.served - (current == nil ? 0 : 1)
        current = nil
        waitingForReady = nil
        let forMemory = process.killedForMemory
        // A worker that leaves cleanly after answering before may not have read a request that raced its exit;
        // commands are deterministic and nothing was committed, so it runs once more on another worker.
        let cleanExitAfterServing = status.isCleanExit && process.served > 1 && request?.retried == false
        let crashed = !stopping && !forMemory && !retiredOnPurpose && !(request == nil && status.isCleanExit)
            && !cleanExitAfterServing
        if forMemory { pool.note(.recycle, of: function) }
        let wasRetired = retired
        retired = true
        if !wasRetired || crashed {
            pool.workerRetired(
                id, of: function, crashed: crashed, beforeServing: answered == 0,
                outcome: request != nil && !cleanExitAfterServing && !stopping ? .failed : nil)
        }
        guard let request else { return }
        if cleanExitAfterServing && !stopping {
            var again = request
            again.retried = true
            return pool.submit(again, to: function)
        }
        let error =
            stopping
            ? WorkerError(.shuttingDown, "the worker pool is stopping")
            : forMemory
                ? WorkerError(.crashed, "\(function.name) worker \(process.pid) went over memory_mb (\(function.manifest.memoryMB)) and was killed")
                : WorkerError(.crashed, "\(function.name) worker \(process.pid) \(status) without answering")
        request.finish(.failure(error))
    }

    // MARK: Ending

    private enum Ending {
        /// SIGKILL to the group now.
        case kill
        /// SIGTERM to the group, SIGKILL after a grace period: a deadline.
        case terminate
        /// Close stdin so it finishes on its own; SIGKILL after a grace period.
        case closeStdin
        /// It is ending on its own; SIGKILL after a grace period if it lingers.
        case leave
    }

    /// Set when the gateway ended the worker on purpose, so its exit is not a crash.
    private var retiredOnPurpose = false

    /// Takes the worker out of its pool, once, and ends it.
    private func retire(
        _ ending: Ending, crashed: Bool = false, outcome: PoolStateMachine<PendingRequest>.Outcome? = nil
    ) {
        process.closeDoor()
        process.state = .stopping
        switch ending {
        case .kill:
            retiredOnPurpose = true
            process.signalGroup(SIGKILL)
        case .terminate:
            retiredOnPurpose = true
            process.terminateGroup(graceMs: WorkerPool.terminationGraceMs)
        case .closeStdin:
            retiredOnPurpose = true
            process.closeStdin()
            _ = pool.loop.schedule(after: Self.recycleGraceMs) { self.process.signalGroup(SIGKILL) }
        case .leave:
            _ = pool.loop.schedule(after: Self.recycleGraceMs) { self.process.signalGroup(SIGKILL) }
        }
        guard !retired else { return }
        retired = true
        pool.workerRetired(id, of: function, crashed: crashed, outcome: outcome)
    }

    private func cancelDeadline() {
        if let timer = deadline { pool.loop.cancel(timer) }
        deadline = nil
    }
}
