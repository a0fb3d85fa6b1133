// The worker pool's I/O thread: one epoll loop over every worker pipe and pidfd, with timers and a queue of tasks
// handed in from other threads (Redis ae.c in spirit). Nothing here ever runs on Swift's cooperative pool.
import CLinux
import Glibc
import Synchronization

/// A single-threaded event loop. Other threads only call `execute`, `executeQuietly`, `watchFromAnyThread` and
/// `stop`; `watch`, `schedule` and the rest are called by tasks, handlers and timers, which all run on the loop
/// thread.
final class EventLoop: @unchecked Sendable {  // the queues, `nextToken`, `stopping` and `threadID` are synchronized; the rest is touched only on the loop thread
    typealias Handler = (_ events: UInt32) -> Void
    static let readable = EPOLLIN.rawValue
    static let writable = EPOLLOUT.rawValue

    /// A registered descriptor. The token, not the fd number, finds the handler, so an event still pending for a
    /// closed descriptor never reaches the handler of a new one that reused its number.
    struct Watch {
        fileprivate let token: UInt64
        fileprivate let fd: Int32
    }

    struct Timer {
        fileprivate let id: Int
    }

    /// One read buffer for every pipe: reads happen one at a time on the loop thread.
    let readBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 16)

    private let epoll: Int32
    private let wakeup: Int32
    private let incoming = Mutex<[@Sendable () -> Void]>([])
    private let quietIncoming = Mutex<[@Sendable () -> Void]>([])
    private let stopping = Atomic<Bool>(false)
    private let threadID = Atomic<UInt>(0)
    private var handlers: [UInt64: Handler] = [:]
    private let nextToken = Atomic<UInt64>(1)
    /// Descriptors another thread put in epoll (`watchFromAnyThread`), each batch with the task that installs their
    /// handlers. The lock is held across the epoll_ctl calls, so an adoption is queued no later than the loop can
    /// see an event for one of its descriptors.
    private let adoptions = Mutex<[@Sendable () -> Void]>([])
    private var timerQueue = MinHeap()
    private var timerHandlers: [Int: () -> Void] = [:]
    private var nextTimer = 0
    /// Loop thread only: whether a request task resumed now may continue on this thread (`AnswerExecutor`). Set
    /// only while a worker's answer is handed over, so that only its own task goes on here, not tasks it wakes.
    var inlineResumes = false
    /// Swift jobs to run on this thread once the current event, timer or task is done (`AnswerExecutor`).
    private var jobs: [(job: UnownedJob, executor: UnownedTaskExecutor)] = []

    init() {
        epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        wakeup = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        precondition(epoll >= 0 && wakeup >= 0, "epoll_create1 or eventfd failed: errno \(errno)")
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = 0
        precondition(epoll_ctl(epoll, EPOLL_CTL_ADD, wakeup, &event) == 0, "epoll_ctl failed: errno \(errno)")

        startThread { self.run() }
    }

    deinit {
        System.close(epoll)
        System.close(wakeup)
        readBuffer.deallocate()
    }

    var inLoopThread: Bool { threadID.load(ordering: .acquiring) == pthread_self() }

    /// Runs `task` on the loop thread, after the current event if called from there.
    func execute(_ task: @escaping @Sendable () -> Void) {
        let wasEmpty = incoming.withLock { tasks in
            tasks.append(task)
            return tasks.count == 1
        }
        // The loop drains every task before it sleeps again, so only the first task since the last drain, from
        // another thread, needs to wake it.
        if wasEmpty && !inLoopThread { wake() }
    }

    /// Like `execute`, but without waking the loop: `task` runs after the next event or timer, for work that can
    /// wait that long (the worker pool's tick fires every `WorkerPool.tickMs`).
    func executeQuietly(_ task: @escaping @Sendable () -> Void) {
        quietIncoming.withLock { $0.append(task) }
    }

    /// Ends the loop thread after the current iteration. Pending tasks and timers are dropped; Swift jobs are not
    /// (`runJobs`).
    func stop() {
        stopping.store(true, ordering: .releasing)
        wake()
    }

    /// Any thread: puts each descriptor in epoll now, and queues `adopt`, which gets their watches in the same order
    /// and must `install` a handler for each on the loop thread. The loop runs adoptions whenever it wakes, and
    /// before it looks for the handler of an event it does not know, so none is missed; with `wake` false it is not
    /// woken for them, and the first event on one of these descriptors (or the next timer) brings them in.
    func watchFromAnyThread(
        _ descriptors: [(fd: Int32, events: UInt32)], wake: Bool, adopt: @escaping @Sendable ([Watch]) -> Void
    ) {
        adoptions.withLock { queue in
            let watches = descriptors.map { descriptor in add(descriptor.fd, for: descriptor.events) }
            queue.append { adopt(watches) }
        }
        if wake && !inLoopThread { self.wake() }
    }

    // MARK: Loop thread only

    /// Calls `handler` with the epoll event bits whenever `fd` is ready (level-triggered); wraps epoll_ctl(2).
    func watch(_ fd: Int32, for events: UInt32, _ handler: @escaping Handler) -> Watch {
        let watch = add(fd, for: events)
        handlers[watch.token] = handler
        return watch
    }

    /// The handler for a watch that `watchFromAnyThread` made.
    func install(_ watch: Watch, _ handler: @escaping Handler) {
        handlers[watch.token] = handler
    }

    /// Stops watching; call it before closing the descriptor. Wraps epoll_ctl(2).
    func unwatch(_ watch: Watch) {
        epoll_ctl(epoll, EPOLL_CTL_DEL, watch.fd, nil)
        handlers[watch.token] = nil
    }

    /// Calls `handler` once, `milliseconds` from now, unless cancelled first.
    func schedule(after milliseconds: Int, _ handler: @escaping () -> Void) -> Timer {
        schedule(at: monotonicNanoseconds() + UInt64(max(0, milliseconds)) * 1_000_000, handler)
    }

    /// Calls `handler` once at `deadline` (`monotonicNanoseconds`), or at once if that has passed.
    func schedule(at deadline: UInt64, _ handler: @escaping () -> Void) -> Timer {
        nextTimer += 1
        timerQueue.push(deadline: deadline, id: nextTimer)
        timerHandlers[nextTimer] = handler
        return Timer(id: nextTimer)
    }

    func cancel(_ timer: Timer) {
        timerHandlers[timer.id] = nil
    }

    /// Runs a Swift job (a task's continuation) on this thread as soon as the current event, timer or task is
    /// done: never from inside the handler that resumed it, so no worker's state is reentered.
    func runAfterCurrentEvent(_ job: UnownedJob, on executor: UnownedTaskExecutor) {
        jobs.append((job, executor))
    }

    /// epoll_ctl(2) ADD under a fresh token; any thread.
    private func add(_ fd: Int32, for events: UInt32) -> Watch {
        let token = nextToken.wrappingAdd(1, ordering: .relaxed).oldValue
        var event = epoll_event()
        event.events = events
        event.data.u64 = token
        precondition(epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) == 0, "epoll_ctl ADD \(fd) failed: errno \(errno)")
        return Watch(token: token, fd: fd)
    }

    // MARK: The loop

    private func run() {
        threadID.store(pthread_self(), ordering: .releasing)
        // Named for ps, top and perf; otherwise it inherits the name of whichever thread created it.
        _ = clinux_name_thread("statefn-io")
        // A write to a pipe whose reader died raises SIGPIPE in the writing thread; blocked here, it stays pending
        // and harmless, and write(2) reports EPIPE instead of killing the gateway.
        var pipeSignal = sigset_t()
        sigemptyset(&pipeSignal)
        sigaddset(&pipeSignal, SIGPIPE)
        pthread_sigmask(SIG_BLOCK, &pipeSignal, nil)

        var events = [epoll_event](repeating: epoll_event(), count: 128)
        while !stopping.load(ordering: .acquiring) {
            runTasks()
            runJobs()
            let ready: Int32
            switch System.retrying({ epoll_wait(epoll, &events, Int32(events.count), nextTimeout()) }) {
            case .success(let count): ready = count
            case .failure(let error): preconditionFailure("epoll_wait failed: \(error)")
            }
            for index in 0..<Int(ready) {
                let token = events[index].data.u64
                if token == 0 {
                    var count: UInt64 = 0
                    _ = withUnsafeMutableBytes(of: &count) { System.read(wakeup, into: $0) }
                } else {
                    if handlers[token] == nil { runAdoptions() }
                    guard let handler = handlers[token] else { continue }  // a descriptor since unwatched
                    handler(events[index].events)
                    runJobs()
                }
            }
            runTimers()
            runJobs()
        }
        // A job is a task waiting to go on: one left here when the loop stops goes on elsewhere.
        for (job, _) in jobs { globalConcurrentExecutor.enqueue(job) }
        jobs = []
    }

    private func runJobs() {
        while !jobs.isEmpty {
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            for (job, executor) in batch { job.runSynchronously(on: executor) }
        }
    }

    private func runAdoptions() {
        let batch = adoptions.withLock { queue in
            defer { queue.removeAll(keepingCapacity: true) }
            return queue
        }
        for adopt in batch { adopt() }
    }

    private func runTasks() {
        runAdoptions()
        while true {
            let tasks =
                incoming.withLock { tasks in
                    defer { tasks.removeAll(keepingCapacity: true) }
                    return tasks
                }
                + quietIncoming.withLock { tasks in
                    defer { tasks.removeAll(keepingCapacity: true) }
                    return tasks
                }
            if tasks.isEmpty { return }
            for task in tasks { task() }
        }
    }

    private func runTimers() {
        let now = monotonicNanoseconds()
        while let (deadline, id) = timerQueue.first, deadline <= now {
            timerQueue.popFirst()
            timerHandlers.removeValue(forKey: id)?()
        }
    }

    /// Milliseconds until the next timer, rounded up so a timer never fires early; -1 to sleep until an event.
    private func nextTimeout() -> Int32 {
        while let (_, id) = timerQueue.first, timerHandlers[id] == nil { timerQueue.popFirst() }
        guard let (deadline, _) = timerQueue.first else { return -1 }
        let now = monotonicNanoseconds()
        guard deadline > now else { return 0 }
        return Int32(min((deadline - now + 999_999) / 1_000_000, UInt64(Int32.max)))
    }

    private func wake() {
        let one: UInt64 = 1
        _ = withUnsafeBytes(of: one) { System.write(wakeup, $0) }
    }
}

/// Runs `body` on a new detached thread of our own (never one of Swift's or Dispatch's); wraps pthread_create(3).
/// The thread starts with the caller's signal mask.
func startThread(_ body: @escaping () -> Void) {
    final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
    var thread = pthread_t()
    let retained = Unmanaged.passRetained(Body(body)).toOpaque()
    let created = pthread_create(&thread, nil, { raw in
        Unmanaged<Body>.fromOpaque(raw!).takeRetainedValue().run()
        return nil
    }, retained)
    precondition(created == 0, "pthread_create failed: \(created)")
    pthread_detach(thread)
}

/// CLOCK_MONOTONIC in nanoseconds; wraps clock_gettime(2).
func monotonicNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// A binary min-heap of timer deadlines; ties go to the earlier timer.
private struct MinHeap {
    private var items: [(deadline: UInt64, id: Int)] = []

    var first: (UInt64, Int)? { items.first.map { ($0.deadline, $0.id) } }

    mutating func push(deadline: UInt64, id: Int) {
        items.append((deadline, id))
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard less(child, parent) else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    mutating func popFirst() {
        items.swapAt(0, items.count - 1)
        items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < items.count && less(left, smallest) { smallest = left }
            if right < items.count && less(right, smallest) { smallest = right }
            if smallest == parent { return }
            items.swapAt(parent, smallest)
            parent = smallest
        }
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        (items[a].deadline, items[a].id) < (items[b].deadline, items[b].id)
    }
}
