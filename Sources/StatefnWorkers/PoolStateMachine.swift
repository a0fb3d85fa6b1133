// The pool of one function as pure state (postgres-nio's PoolStateMachine in spirit): which workers exist, which
// are idle, and which requests wait, in order. It does no I/O: each event returns the action its owner carries
// out after releasing the lock. Warm pools reuse idle workers; fork mode uses the same slots, one per process, and
// never reuses them.

struct PoolStateMachine<Request> {
    typealias WorkerID = Int

    enum Rejection: Equatable {
        case queueFull, queueTimedOut, shuttingDown
    }

    enum Action {
        case none
        /// Send the request to this idle worker.
        case run(Request, on: WorkerID)
        /// Start a new worker with this id and send it the request.
        case spawn(WorkerID, for: Request)
        /// The request waits; fire `queueTimedOut(ticket)` when its queue timeout passes.
        case armQueueTimer(ticket: Int)
        case reject(Request, Rejection)
    }

    struct Counts: Equatable {
        var busy: Int
        var idle: Int
        var queued: Int
    }

    let maxWorkers: Int
    let maxQueue: Int
    private var busy: Set<WorkerID> = []
    /// The most recently used last: reusing it keeps its caches warm, and lets the others sit idle.
    private var idle: [WorkerID] = []
    private var queue: [(ticket: Int, request: Request)] = []
    private var nextWorker: WorkerID = 0
    private var nextTicket = 0
    private var shuttingDown = false

    init(maxWorkers: Int, maxQueue: Int) {
        precondition(maxWorkers >= 1, "a pool needs room for one worker")
        self.maxWorkers = maxWorkers
        self.maxQueue = maxQueue
    }

    var counts: Counts { Counts(busy: busy.count, idle: idle.count, queued: queue.count) }

    mutating func request(_ request: Request) -> Action {
        if shuttingDown { return .reject(request, .shuttingDown) }
        if let worker = idle.popLast() {
            busy.insert(worker)
            return .run(request, on: worker)
        }
        if busy.count < maxWorkers { return .spawn(reserveWorker(), for: request) }
        guard queue.count < maxQueue else { return .reject(request, .queueFull) }
        nextTicket += 1
        queue.append((nextTicket, request))
        return .armQueueTimer(ticket: nextTicket)
    }

    /// A busy worker answered and can take another request.
    mutating func workerFinished(_ worker: WorkerID) -> Action {
        precondition(busy.contains(worker), "worker \(worker) finished a request it did not have")
        if !queue.isEmpty { return .run(queue.removeFirst().request, on: worker) }
        busy.remove(worker)
        idle.append(worker)
        return .none
    }

    /// A worker is gone (it exited, broke the protocol, timed out, was recycled, or never started); its slot may
    /// serve the oldest waiting request.
    mutating func workerRetired(_ worker: WorkerID) -> Action {
        if busy.remove(worker) == nil {
            guard let index = idle.firstIndex(of: worker) else { return .none }
            idle.remove(at: index)
        }
        guard !queue.isEmpty, !shuttingDown else { return .none }
        return .spawn(reserveWorker(), for: queue.removeFirst().request)
    }

    mutating func queueTimedOut(ticket: Int) -> Action {
        guard let index = queue.firstIndex(where: { $0.ticket == ticket }) else { return .none }
        return .reject(queue.remove(at: index).request, .queueTimedOut)
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
        return nextWorker
    }
}
