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
        collectOrphans()
        spawnSettled()
    }

    /// Set when the gateway is a child subreaper (`WorkerSandbox.becomeSubreaper`).
    var reapsOrphans = false
    /// Orphans sent SIGKILL and not reaped yet.
    private var condemned: Set<pid_t> = []

    /// Kills and reaps what workers left behind. With the gateway a child subreaper, a worker's descendant that
    /// left its process group (`setsid`, `setpgid`), and so escaped the group's SIGKILL, becomes a child of the
    /// gateway once the worker is gone: of its main thread, which the kernel picks as the first live thread of the
    /// subreaper. Workers are children of the spawn threads, never of the main thread, and the main thread starts
    /// no process once the gateway serves, so every child it has is such an orphan. Runs after every reap and
    /// once a second.
    func collectOrphans() {
        guard reapsOrphans else { return }
        let gateway = getpid()
        let text = readText("/proc/\(gateway)/task/\(gateway)/children") ?? ""
        for pid in text.split(separator: " ").compactMap({ pid_t($0) })
        where live[pid] == nil && !condemned.contains(pid) {
            logger.warning("killing a process a worker left behind outside its process group", metadata: ["pid": "\(pid)"])
            kill(pid, SIGKILL)
            condemned.insert(pid)
        }
        for pid in condemned {
            // Reaped now, or not ours to wait for any more (ECHILD): either way it is done.
            if case .success(nil) = System.wait(for: pid, options: WNOHANG) { continue }
            condemned.remove(pid)
        }
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
        for entry in live.values { entry.process.tearDown(from: .terminate) }
        stopTimer = loop.schedule(after: Teardown.graceMs + Teardown.reapWaitMs) {
            self.logger.error("\(self.live.count) workers still not reaped after SIGKILL")
            self.finishStopping()
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
