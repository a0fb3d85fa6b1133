// The part of the worker pool that lives on the event loop thread: the warm workers, every process not yet
// reaped, and a shutdown in progress.
import Glibc
import Logging
import Synchronization

final class WorkerIO: @unchecked Sendable {  // confined to the event loop thread, but for `spawnGate` (its own lock)
    struct WarmKey: Hashable {
        let pool: WorkerPool.PoolKey
        let worker: Int
    }

    static let terminationGraceMs = 1_500
    static let killGraceMs = 5_000

    /// Spawns under way on the spawn threads, counted from any thread: a stop closes the gate and waits for them
    /// too, so none escapes unreaped.
    struct SpawnGate {
        var closed = false
        var pending = 0
    }

    var warm: [WarmKey: WarmWorker] = [:]
    let spawnGate = Mutex(SpawnGate())
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
        if stopping && live.isEmpty && spawnGate.withLock({ $0.pending }) == 0 { finishStopping() }
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
        let pendingSpawns = spawnGate.withLock { gate in
            gate.closed = true
            return gate.pending
        }
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
