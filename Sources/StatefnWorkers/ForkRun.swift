// Fork mode (DESIGN.md section 3): one process per request. It gets one request line and end of file, writes one
// answer and exits. A valid answer counts even if the exit status is not zero; no answer is a crash.
import Glibc

final class ForkRun: @unchecked Sendable {  // confined to the event loop thread
    private let slot: Int
    private let function: FunctionDefinition
    private let process: WorkerProcess
    private let pool: WorkerPool
    private var request: PendingRequest?
    private var deadline: EventLoop.Timer?
    private var sawFirstLine = false
    private var timedOut = false
    /// How its request ended, once it has.
    private var outcome: PoolStateMachine<PendingRequest>.Outcome?

    init(slot: Int, function: FunctionDefinition, process: WorkerProcess, pool: WorkerPool) {
        self.slot = slot
        self.function = function
        self.process = process
        self.pool = pool
        process.onLine = { line, truncated in self.received(line, truncated: truncated) }
        process.onExit = { status in self.exited(status) }
    }

    /// `alreadyWritten` bytes of the request line went to stdin before the process came to the loop thread (and
    /// stdin is closed if that was all of it); the deadline counts from `began`, when the spawn began.
    func start(_ request: PendingRequest, alreadyWritten: Int, began: UInt64) {
        self.request = request
        process.state = .busy
        process.served = 1
        if alreadyWritten < request.line.count {
            process.send(Array(request.line[alreadyWritten...]), thenClose: true)
        }
        // The deadline also bounds a process that answered but lingers: its slot is freed only when it exits.
        let timeout = UInt64(function.manifest.timeoutMs) * 1_000_000
        deadline = pool.loop.schedule(at: began + timeout) { self.deadlinePassed() }
    }

    private func received(_ line: [UInt8], truncated: Bool) {
        guard let request else { return }  // Only the first line is the answer.
        let parsed = WorkerProtocol.parse(line, truncated: truncated, limit: process.stdoutLineLimit)
        if !sawFirstLine {
            sawFirstLine = true
            if WorkerProtocol.isReady(parsed) { return }
        }
        self.request = nil
        let answer = WorkerProtocol.answer(parsed, to: request.id)
        outcome = .succeeded
        if case .failure = answer {
            outcome = .failed
            process.tearDown(from: .kill)
        }
        pool.deliver(answer, to: request, lineBytes: line.count)
    }

    private func deadlinePassed() {
        deadline = nil
        // Slow is not broken: a timeout is not weighed in the failure ratio (see WarmWorkerStateMachine).
        timedOut = true
        process.tearDown(from: .terminate)
        guard let request else { return }
        self.request = nil
        pool.note(.timeout, of: function)
        request.finish(.failure(.timedOut(function, pid: process.pid)))
    }

    private func exited(_ status: ExitStatus) {
        if let timer = deadline { pool.loop.cancel(timer) }
        deadline = nil
        pool.io.reaped(process)
        let forMemory = process.killedForMemory
        if forMemory { pool.note(.recycle, of: function) }
        let crashed = request != nil && !timedOut && !forMemory && !pool.io.stopping
        if request != nil && !pool.io.stopping { outcome = .failed }
        // One process per request: a crash is its request's failure, weighed in the failure ratio; only a spawn
        // that fails is a start-up crash.
        pool.workerRetired(slot, of: function, crashed: crashed, beforeServing: false, outcome: outcome)
        guard let request else { return }
        self.request = nil
        let error =
            pool.io.stopping
            ? WorkerError(.shuttingDown, "the worker pool is stopping")
            : forMemory
                ? WorkerError(.crashed, "\(function.name) process \(process.pid) went over memory_mb (\(function.manifest.memoryMB)) and was killed")
                : WorkerError(.crashed, "\(function.name) process \(process.pid) \(status) without answering")
        request.finish(.failure(error))
    }
}
