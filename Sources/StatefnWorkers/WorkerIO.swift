// The part of the worker pool that lives on the event loop thread: the warm workers, every process not yet
// reaped, and a shutdown in progress.
import Glibc
import Logging

final class WorkerIO: @unchecked Sendable {  // confined to the event loop thread
    struct WarmKey: Hashable {
        let pool: WorkerPool.PoolKey
        let worker: Int
    }

    static let terminationGraceMs = 1_500
    static let killGraceMs = 5_000

    var warm: [WarmKey: WarmWorker] = [:]
    /// Spawns under way on the spawn queues: a stop waits for them too, so none escapes unreaped.
    var pendingSpawns = 0
    private(set) var stopping = false
    private let loop: EventLoop
    private let logger: Logger
    private var live: [pid_t: (pool: WorkerPool.PoolKey, process: WorkerProcess)] = [:]
    private var stopWaiters: [CheckedContinuation<Void, Never>] = []
    private var stopTimer: EventLoop.Timer?

    init(loop: EventLoop, logger: Logger) {
        self.loop = loop
        self.logger = logger
    }

    func started(_ process: WorkerProcess, in pool: WorkerPool.PoolKey) {
        live[process.pid] = (pool, process)
    }

    func reaped(_ process: WorkerProcess) {
        live[process.pid] = nil
        spawnSettled()
    }

    /// Completes a stop once every process is reaped and no spawn is under way.
    func spawnSettled() {
        if stopping && live.isEmpty && pendingSpawns == 0 { finishStopping() }
    }

    /// Every live worker, by pool, with what it is doing and its resident set.
    func workersByPool() -> [WorkerPool.PoolKey: [WorkerStatus]] {
        var workers: [WorkerPool.PoolKey: [WorkerStatus]] = [:]
        for (pid, entry) in live {
            let process = entry.process
            workers[entry.pool, default: []].append(
                WorkerStatus(
                    pid: pid, state: process.state.rawValue, requestsServed: process.served,
                    residentBytes: process.residentBytes() ?? 0))
        }
        return workers
    }

    /// The RSS watch: kills every worker over its `memory_mb`; their owners see the exit.
    func enforceMemoryLimits() {
        for entry in live.values { _ = entry.process.enforceMemoryLimit() }
    }

    /// SIGTERM to every group, SIGKILL after a grace, and `waiter` resumes once all are reaped (or, for a process
    /// stuck in the kernel, after a last grace: it cannot be helped).
    func stopAll(then waiter: CheckedContinuation<Void, Never>) {
        stopWaiters.append(waiter)
        let alreadyStopping = stopping
        stopping = true
        guard !live.isEmpty || pendingSpawns > 0 else { return finishStopping() }
        if alreadyStopping { return }
        for entry in live.values {
            entry.process.closeStdin()
            entry.process.signalGroup(SIGTERM)
        }
        stopTimer = loop.schedule(after: Self.terminationGraceMs) {
            for entry in self.live.values { entry.process.signalGroup(SIGKILL) }
            self.stopTimer = self.loop.schedule(after: Self.killGraceMs) {
                self.logger.error("\(self.live.count) workers still not reaped after SIGKILL")
                self.finishStopping()
            }
        }
    }

    private func finishStopping() {
        if let timer = stopTimer { loop.cancel(timer) }
        stopTimer = nil
        let waiters = stopWaiters
        stopWaiters = []
        for waiter in waiters { waiter.resume() }
    }
}
