// Warm mode (DESIGN.md section 3): a long-lived process reads request lines in a loop and answers each in order,
// one request in flight at a time. It may announce itself with {"ready":true} first.
import Glibc

final class WarmWorker: @unchecked Sendable {  // confined to the event loop thread
    /// How long a recycled worker gets to finish on its own after stdin closes.
    static let recycleGraceMs = 2_000

    let id: Int
    private let function: FunctionDefinition
    private let process: WorkerProcess
    private let pool: WorkerPool
    private var current: PendingRequest?
    private var deadline: EventLoop.Timer?
    private var served = 0
    private var sawFirstLine = false
    private var retired = false

    init(id: Int, function: FunctionDefinition, process: WorkerProcess, pool: WorkerPool) {
        self.id = id
        self.function = function
        self.process = process
        self.pool = pool
        process.onLine = { line, truncated in self.received(line, truncated: truncated) }
        process.onStdoutClosed = { self.retire(gracefully: false) }
        process.onExit = { status in self.exited(status) }
    }

    var isAvailable: Bool { !retired && current == nil }

    func send(_ request: PendingRequest) {
        precondition(isAvailable, "worker \(process.pid) of \(function.name) got a request while unavailable")
        current = request
        served += 1
        process.send(request.line, thenClose: false)
        deadline = pool.loop.schedule(after: function.manifest.timeoutMs) { self.timedOut() }
    }

    private func received(_ line: [UInt8], truncated: Bool) {
        if !sawFirstLine {
            sawFirstLine = true
            if !truncated && isReadyLine(line) { return }
        }
        guard let request = current else {
            pool.logger.warning(
                "worker wrote a line with no request in flight; replacing it",
                metadata: ["function": "\(function.name)", "pid": "\(process.pid)"])
            return retire(gracefully: false)
        }
        current = nil
        if let timer = deadline { pool.loop.cancel(timer) }
        deadline = nil
        let answer =
            truncated
            ? .failure(WorkerError(.invalidResponse, "an answer line over \(WorkerProcess.stdoutLineLimit) bytes"))
            : decodeAnswer(line, to: request.id)
        if case .failure(let error) = answer {
            pool.logger.warning(
                "replacing worker: \(error.detail)", metadata: ["function": "\(function.name)", "pid": "\(process.pid)"])
            retire(gracefully: false)
        } else if function.manifest.maxRequests > 0 && served >= function.manifest.maxRequests {
            retire(gracefully: true)
        } else {
            pool.workerFinished(id, of: function)
        }
        request.finish(answer)
    }

    private func timedOut() {
        deadline = nil
        guard let request = current else { return }
        current = nil
        retire(gracefully: false)
        request.finish(
            .failure(
                WorkerError(
                    .timedOut,
                    "\(function.name): no answer within \(function.manifest.timeoutMs) ms; process group "
                        + "\(process.pid) killed")))
    }

    private func exited(_ status: ExitStatus) {
        if let timer = deadline { pool.loop.cancel(timer) }
        deadline = nil
        retire(gracefully: false)
        pool.io.warm[WorkerIO.WarmKey(pool: WorkerPool.PoolKey(function), worker: id)] = nil
        pool.io.reaped(process)
        guard let request = current else { return }
        current = nil
        let error =
            pool.io.stopping
            ? WorkerError(.shuttingDown, "the worker pool is stopping")
            : WorkerError(.crashed, "\(function.name) worker \(process.pid) \(status) without answering")
        request.finish(.failure(error))
    }

    /// Takes the worker out of its pool, once, and ends it: at once, or by closing its stdin so it can finish.
    private func retire(gracefully: Bool) {
        if gracefully {
            process.closeStdin()
            _ = pool.loop.schedule(after: Self.recycleGraceMs) { self.process.signalGroup(SIGKILL) }
        } else {
            process.signalGroup(SIGKILL)
        }
        guard !retired else { return }
        retired = true
        pool.workerRetired(id, of: function)
    }
}
