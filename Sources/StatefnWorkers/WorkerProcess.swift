// One spawned worker as the event loop sees it: request bytes going in, stdout lines coming out, stderr lines going
// to the log, and finally its exit, after which it is reaped and every descriptor is closed.
import Glibc
import Logging
import Synchronization

/// Where a teardown begins (`WorkerProcess.tearDown`): each step leads to the next after `graceMs`.
enum Teardown: Equatable {
    /// Ask it to finish: close stdin.
    case closeStdin
    /// Tell it to stop: SIGTERM to the group.
    case terminate
    /// SIGKILL to the group, now.
    case kill

    /// Between the steps.
    static let graceMs = 1_000
    /// After the last step, how long a stop waits for the kernel to let the processes be reaped.
    static let reapWaitMs = 5_000
}

/// Owns a worker's pipes and pidfd and reaps its pid; its owner (a warm worker or a fork run) sees only lines and
/// the exit. The event loop's registrations keep it alive until it is reaped, so no process is ever forgotten.
final class WorkerProcess: @unchecked Sendable {  // confined to the event loop thread, except `door` (its own lock)
    static let stderrLineLimit = 16 << 10

    /// What the worker is doing, for `GET /v1/functions`; its owner keeps it current.
    enum State: String {
        case starting, idle, busy, stopping
    }

    let pid: pid_t
    let function: String
    /// The manifest's `max_response_bytes`.
    let stdoutLineLimit: Int
    let memoryLimitBytes: Int
    private(set) var exited = false
    var state = State.starting
    var served = 0
    /// Set when the RSS watch killed it, so its owner can say why it died.
    private(set) var killedForMemory = false
    /// Each complete stdout line, without its newline. `truncated` means it was over `stdoutLineLimit`.
    var onLine: (_ line: [UInt8], _ truncated: Bool) -> Void = { _, _ in }
    /// stdout reached end of file while the process may still be running.
    var onStdoutClosed: () -> Void = {}
    /// The process has exited and been reaped; nothing else is called after this.
    var onExit: (ExitStatus) -> Void = { _ in }

    private let loop: EventLoop
    private let logger: Logger
    private var stdin: Int32
    private var stdout: Int32
    private var stderr: Int32
    private var pidfd: Int32
    /// Its memory cgroup, when it has one (`MemoryCgroups`).
    private let cgroup: WorkerCgroup?
    private var stdinWatch: EventLoop.Watch?
    private var stdoutWatch: EventLoop.Watch?
    private var stderrWatch: EventLoop.Watch?
    private var pidfdWatch: EventLoop.Watch?
    private var stdoutLines: LineFramer
    private var stderrLines = LineFramer(limit: WorkerProcess.stderrLineLimit)
    private var unwritten: [UInt8] = []
    private var written = 0
    private var closeStdinWhenWritten = false
    /// stdin as another thread may write it while the owner allows (`openDoor`, `writeDirect`), and the request
    /// written that way, until the loop thread takes it on. The lock also keeps `closeStdin` from closing the
    /// descriptor under a writer.
    private let door = Mutex(Door())

    private struct Door {
        var stdin: Int32 = -1
        var sent: (request: PendingRequest, atMs: Int)?
    }

    /// Where a new process's stdout, stderr and pidfd are in epoll (`EventLoop.watchFromAnyThread`).
    struct Watches: Sendable {
        let stdout: EventLoop.Watch
        let stderr: EventLoop.Watch
        let pidfd: EventLoop.Watch

        /// Any thread: puts `spawned`'s descriptors in epoll and has the loop thread run `adopt` with their
        /// watches, which must make a `WorkerProcess` of them.
        static func add(
            _ spawned: SpawnedProcess, to loop: EventLoop, wake: Bool, adopt: @escaping @Sendable (Watches) -> Void
        ) {
            let readable = EventLoop.readable
            loop.watchFromAnyThread(
                [(spawned.stdout, readable), (spawned.stderr, readable), (spawned.pidfd, readable)], wake: wake
            ) { watches in adopt(Watches(stdout: watches[0], stderr: watches[1], pidfd: watches[2])) }
        }
    }

    /// Takes over a process `Spawner.spawn` started, whose descriptors are already in epoll; from here on it lives
    /// on the loop thread.
    init(
        _ spawned: SpawnedProcess, watches: Watches, of definition: FunctionDefinition, loop: EventLoop,
        logger: Logger
    ) {
        pid = spawned.pid
        function = definition.name
        stdoutLineLimit = definition.manifest.maxResponseBytes
        stdoutLines = LineFramer(limit: stdoutLineLimit)
        memoryLimitBytes = definition.manifest.memoryMB << 20
        self.loop = loop
        self.logger = logger
        stdin = spawned.stdin
        stdout = spawned.stdout
        stderr = spawned.stderr
        pidfd = spawned.pidfd
        cgroup = spawned.cgroup
        stdoutWatch = watches.stdout
        stderrWatch = watches.stderr
        pidfdWatch = watches.pidfd
        loop.install(watches.stdout) { _ in self.readStdout() }
        loop.install(watches.stderr) { _ in self.readStderr() }
        loop.install(watches.pidfd) { _ in self.reap() }
    }

    /// Writes `bytes` to the worker's stdin, now or as the pipe drains.
    func send(_ bytes: [UInt8], thenClose: Bool) {
        guard stdin >= 0 else { return }  // It stopped reading; its exit or stdout will tell the owner why.
        unwritten += bytes
        closeStdinWhenWritten = thenClose
        flushStdin()
    }

    /// Lets one request line be written from any thread (`writeDirect`): the owner calls it when the worker is
    /// idle, and the first direct write, `closeDoor` or `closeStdin` ends it.
    func openDoor() {
        guard stdin >= 0, unwritten.isEmpty else { return }
        door.withLock { $0.stdin = stdin }
    }

    func closeDoor() {
        door.withLock { $0.stdin = -1 }
    }

    /// Writes `request`'s line straight to stdin from the caller's thread, saving a hop through the loop thread,
    /// if the door is open and the pipe takes the whole line at once (a line of at most PIPE_BUF bytes is written
    /// whole or not at all). Any thread; false leaves everything as it was. SIGPIPE is ignored (`WorkerPool.init`).
    func writeDirect(_ request: PendingRequest, nowMs: Int) -> Bool {
        guard request.line.count <= Int(PIPE_BUF) else { return false }
        return door.withLock { door in
            guard door.stdin >= 0 else { return false }
            let result = request.line.withUnsafeBytes { System.write(door.stdin, $0) }
            guard case .success(request.line.count) = result else { return false }
            door.stdin = -1
            door.sent = (request, nowMs)
            return true
        }
    }

    /// The request `writeDirect` sent, once: the owner takes it on as its request in flight.
    func takeDirectlySent() -> (request: PendingRequest, atMs: Int)? {
        door.withLock { door in
            defer { door.sent = nil }
            return door.sent
        }
    }

    /// Closing stdin is how a JSON-lines worker is asked to finish: its read loop ends.
    func closeStdin() {
        guard stdin >= 0 else { return }
        closeDoor()
        if let watch = stdinWatch { loop.unwatch(watch) }
        stdinWatch = nil
        System.close(stdin)
        stdin = -1
        unwritten = []
        written = 0
    }

    /// Signals the worker's whole process group, grandchildren included. Until the pid is reaped it cannot be
    /// reused, so this never hits a stranger.
    func signalGroup(_ signal: Int32) {
        guard !exited else { return }
        kill(-pid, signal)
    }

    /// The leader's resident set in bytes, from /proc/<pid>/statm; nil once it is gone.
    func residentBytes() -> Int? {
        guard !exited, let text = readText("/proc/\(pid)/statm") else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Kills the group if the leader's resident set is over `memory_mb`: RLIMIT_DATA does not cover everything
    /// (shared mappings, memory a runtime maps itself), so this is the backstop. Returns whether it did. A worker
    /// in a memory cgroup is left to the kernel, which charges all of that to the cgroup and kills at the limit
    /// exactly; a poll racing it would only blur why the worker died.
    func enforceMemoryLimit() -> Bool {
        guard cgroup == nil, !killedForMemory, let resident = residentBytes(), resident > memoryLimitBytes else {
            return false
        }
        killedForMemory = true
        logger.warning(
            "worker over memory_mb (\(resident >> 20) MiB resident); killing it",
            metadata: ["function": "\(function)", "pid": "\(pid)"])
        tearDown(from: .kill)
        return true
    }

    /// Ends the worker by the one teardown sequence every ending uses (warm workers, fork runs, shutdown), entered
    /// at `step`: close stdin (a JSON-lines worker's read loop ends), and after `Teardown.graceMs` SIGTERM to the
    /// group (it may clean up), and after as long again SIGKILL for whatever is left (a worker that ignores both,
    /// or grandchildren that do). Each later step is skipped once the process has been reaped.
    func tearDown(from step: Teardown) {
        guard !exited else { return }
        closeStdin()
        switch step {
        case .closeStdin:
            _ = loop.schedule(after: Teardown.graceMs) { self.tearDown(from: .terminate) }
        case .terminate:
            signalGroup(SIGTERM)
            logger.debug(
                "sent SIGTERM to the worker's process group; SIGKILL follows after the grace",
                metadata: ["function": "\(function)", "pid": "\(pid)", "grace_ms": "\(Teardown.graceMs)"])
            _ = loop.schedule(after: Teardown.graceMs) { self.tearDown(from: .kill) }
        case .kill:
            signalGroup(SIGKILL)
        }
    }

    // MARK: Events

    private func flushStdin() {
        let (count, stopped) = unwritten.withUnsafeBytes {
            System.writeAll(stdin, UnsafeRawBufferPointer(rebasing: $0[written...]))
        }
        written += count
        if stopped == .wouldBlock {
            if stdinWatch == nil {
                stdinWatch = loop.watch(stdin, for: EventLoop.writable) { _ in self.flushStdin() }
            }
            return
        } else if stopped != nil {
            closeStdin()  // EPIPE: the worker closed stdin or died; stdout and its exit tell the rest.
            return
        }
        unwritten.removeAll(keepingCapacity: true)
        written = 0
        if let watch = stdinWatch { loop.unwatch(watch) }
        stdinWatch = nil
        if closeStdinWhenWritten { closeStdin() }
    }

    private func readStdout() {
        switch readChunk(stdout) {
        case .data(let bytes):
            stdoutLines.append(bytes)
            while case .line(let line, let truncated) = stdoutLines.next() { onLine(line, truncated) }
        case .endOfFile: closeStdout()
        case .wouldBlock: break
        }
    }

    private func readStderr() {
        switch readChunk(stderr) {
        case .data(let bytes):
            stderrLines.append(bytes)
            while case .line(let line, let truncated) = stderrLines.next() { log(line, truncated: truncated) }
        case .endOfFile: closeStderr()
        case .wouldBlock: break
        }
    }

    private func closeStdout() {
        guard stdout >= 0 else { return }
        if let watch = stdoutWatch { loop.unwatch(watch) }
        stdoutWatch = nil
        System.close(stdout)
        stdout = -1
        if let last = stdoutLines.remainder() { onLine(last, false) }
        onStdoutClosed()
    }

    private func closeStderr() {
        guard stderr >= 0 else { return }
        if let watch = stderrWatch { loop.unwatch(watch) }
        stderrWatch = nil
        System.close(stderr)
        stderr = -1
        if let last = stderrLines.remainder() { log(last, truncated: false) }
    }

    /// The pidfd is readable: the process has exited and is a zombie until waitpid.
    private func reap() {
        // While the leader is a zombie its pid still names the group, so whatever it left behind can be killed
        // safely; orphans would otherwise outlive their function.
        kill(-pid, SIGKILL)
        while stdout >= 0, case .data(let bytes) = readChunk(stdout) {
            stdoutLines.append(bytes)
            while case .line(let line, let truncated) = stdoutLines.next() { onLine(line, truncated) }
        }
        while stderr >= 0, case .data(let bytes) = readChunk(stderr) {
            stderrLines.append(bytes)
            while case .line(let line, let truncated) = stderrLines.next() { log(line, truncated: truncated) }
        }
        let status: Int32
        switch System.wait(for: pid) {
        case .success(let reaped?): status = reaped
        case .success(nil), .failure:
            // Not ours to wait for: never a clean exit.
            logger.error("cannot reap a worker", metadata: ["function": "\(function)", "pid": "\(pid)"])
            status = 255 << 8
        }
        exited = true
        if let cgroup, cgroup.release(), !killedForMemory {
            killedForMemory = true
            logger.warning(
                "worker over memory_mb; the kernel's OOM killer ended it in its \(cgroup.version.rawValue)",
                metadata: ["function": "\(function)", "pid": "\(pid)"])
        }
        closeStdin()
        closeStdout()
        closeStderr()
        if let watch = pidfdWatch { loop.unwatch(watch) }
        pidfdWatch = nil
        System.close(pidfd)
        pidfd = -1
        let onExit = self.onExit
        // The owners' closures capture them and they hold this process: drop the cycle now that it is over.
        onLine = { _, _ in }
        onStdoutClosed = {}
        self.onExit = { _ in }
        onExit(ExitStatus(raw: status))
    }

    private enum Chunk {
        case data(UnsafeRawBufferPointer)
        case endOfFile
        case wouldBlock
    }

    /// One read(2) into the loop's shared buffer; a read error counts as end of file.
    private func readChunk(_ fd: Int32) -> Chunk {
        switch System.read(fd, into: loop.readBuffer) {
        case .success(0): .endOfFile
        case .success(let count): .data(UnsafeRawBufferPointer(rebasing: loop.readBuffer[..<count]))
        case .failure(.wouldBlock): .wouldBlock
        case .failure: .endOfFile
        }
    }

    private func log(_ line: [UInt8], truncated: Bool) {
        var text = String(decoding: line, as: UTF8.self)
        if text.hasSuffix("\r") { text.removeLast() }
        if truncated { text += "…[truncated]" }
        logger.info("\(text)", metadata: ["function": "\(function)", "pid": "\(pid)"])
    }
}
