// Shared helpers for the worker tests: where the real and fixture functions are, a log handler that keeps what the
// workers wrote to stderr, and process-table checks (from /proc/*/stat) for workers, their groups and zombies.
import Foundation
import Glibc
import Logging
import StatefnJSON
import StatefnTestSupport
import Synchronization
import Testing

@testable import StatefnWorkers

enum Paths {
    /// The repository root, found from this file's path.
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let functions = repository + "/functions"
    static let fixtures = repository + "/Tests/StatefnWorkersTests/Fixtures/functions"
}

/// A fixture function, optionally with a changed manifest.
func fixture(_ name: String, _ change: (inout FunctionManifest) -> Void = { _ in }) -> FunctionDefinition {
    guard var definition = FunctionCatalog.scan(directory: Paths.fixtures).functions[name] else {
        fatalError("no fixture function \(name) in \(Paths.fixtures)")
    }
    change(&definition.manifest)
    return definition
}

func example(_ name: String) -> FunctionDefinition {
    guard let definition = FunctionCatalog.scan(directory: Paths.functions).functions[name] else {
        fatalError("no example function \(name) in \(Paths.functions)")
    }
    return definition
}

/// A worker request as the gateway builds it (DESIGN.md section 3). `principal` is what the worker sees: `.null`
/// for an anonymous public call, `{"sub": "fn:<function>/<entity>", ...}` for a command run from an effect.
func request(
    _ id: String, function: String = "test", entity: String = "e1", command: String = "run",
    payload: JSONValue = nil, state: JSONValue = nil, readonly: Bool = false,
    principal: JSONValue = ["sub": "tester", "scopes": []]
) -> JSONValue {
    [
        "id": .string(id), "function": .string(function), "entity": .string(entity), "command": .string(command),
        "payload": payload, "state": state, "version": 0, "readonly": .bool(readonly),
        "principal": principal, "deadline_ms": 10_000,
    ]
}

/// Keeps every log event, so tests can read what workers wrote to stderr.
final class LogRecorder: Sendable {
    struct Entry: Sendable {
        let message: String
        let metadata: Logger.Metadata
        /// When it was logged: the logging call itself, on the thread that did what it says.
        var at = Date()
    }
    private let entries = Mutex<[Entry]>([])

    var logger: Logger {
        Logger(label: "workers-test") { _ in Handler(recorder: self) }
    }

    var all: [Entry] { entries.withLock { $0 } }

    func messages(containing text: String) -> [Entry] { all.filter { $0.message.contains(text) } }

    struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let entry = Entry(
                message: event.message.description, metadata: metadata.merging(event.metadata ?? [:]) { $1 })
            recorder.entries.withLock { $0.append(entry) }
        }
    }
}

/// Whether any process, zombies included, is still in process group `group`; kill(2) with signal 0.
func groupExists(_ group: Int32) -> Bool {
    kill(-group, 0) == 0 || errno != ESRCH
}

/// Waits (up to `seconds`) for `condition`, polling every `every`; for effects that happen asynchronously, like
/// reaping.
func eventually(
    seconds: Double = 10, every interval: Duration = .milliseconds(20), _ condition: () async -> Bool
) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return await condition()
}

/// Waits (up to `seconds`) for `value` to give something, polling; nil if it never did.
func eventuallyValue<T>(
    seconds: Double = 10, every interval: Duration = .milliseconds(20), _ value: () async -> T?
) async -> T? {
    var found: T?
    _ = await eventually(seconds: seconds, every: interval) {
        found = await value()
        return found != nil
    }
    return found
}

// MARK: The process table

/// Whether `pid`'s chain of parents (`parents`: pid to ppid, from one look at the table) reaches `ancestor`.
func descends(_ pid: Int32, from ancestor: Int32, parents: [Int32: Int32]) -> Bool {
    var next = parents[pid]
    var steps = 0
    while let parent = next, parent > 1, steps < 64 {
        if parent == ancestor { return true }
        next = parents[parent]
        steps += 1
    }
    return false
}

/// What is left of a worker: the process itself, anything in its process group, and anything still descended
/// from it; zombies included. The kernel hands out a pid again only once nothing uses it as a pid or a group id,
/// so a later process with the worker's pid means nothing of the worker is left.
func remains(of worker: ProcessEntry, in table: [ProcessEntry] = processTable()) -> [ProcessEntry] {
    if table.contains(where: { $0.pid == worker.pid && $0.startTicks != worker.startTicks }) { return [] }
    let parents = Dictionary(table.map { ($0.pid, $0.ppid) }, uniquingKeysWith: { first, _ in first })
    return table.filter { entry in
        entry.pid == worker.pid || entry.pgid == worker.pgid || descends(entry.pid, from: worker.pid, parents: parents)
    }
}

/// Whether the worker itself is still running (a zombie is dead: it only waits to be reaped).
func isAlive(_ worker: ProcessEntry) -> Bool {
    guard let now = ProcessEntry(pid: worker.pid), now.startTicks == worker.startTicks else { return false }
    return now.isRunning
}

/// What is left of the worker the pool spawned as `pid` (a pid known without its start time): a process with that
/// pid, or anything in the process group it led; zombies included.
func remains(ofPid pid: Int32, in table: [ProcessEntry] = processTable()) -> [ProcessEntry] {
    table.filter { $0.pid == pid || $0.pgid == pid }
}

/// Waits for a worker of `function` to show in the process table as the pool spawned it: a pid from the pool's
/// own record (`status().pids`), a child of this process, leading a process group of its own, not yet reaped, and
/// running `command` if one is given (`sleep` for a script that exec'd into sleep). Returns it as the table showed it.
///
/// With `recorder`, for a fixture that writes to stderr as it starts, the pids come from those lines as the pool
/// logs them, and a thread of the test's own looks in /proc: neither waits for Swift's cooperative threads, which
/// other tests running beside this one can keep busy for longer than a short-lived worker lives.
func sightWorker(
    of function: String, in pool: WorkerPool, running command: String? = nil, recorder: LogRecorder? = nil,
    seconds: Double = 10
) async -> ProcessEntry? {
    let me = getpid()
    @Sendable func isTheWorker(_ entry: ProcessEntry) -> Bool {
        entry.ppid == me && entry.pgid == entry.pid && entry.state != "Z" && (command == nil || entry.command == command)
    }
    if let recorder {
        let found = Mutex<ProcessEntry?>(nil)
        let watcher = OwnThread {
            let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
            while ContinuousClock.now < deadline {
                let pids = spawnedPids(of: function, in: recorder)
                if let entry = pids.lazy.compactMap({ ProcessEntry(pid: $0) }).first(where: isTheWorker) {
                    found.withLock { $0 = entry }
                    return
                }
                usleep(1000)
            }
        }
        await watcher.finished()
        return found.withLock { $0 }
    }
    return await eventuallyValue(seconds: seconds, every: .milliseconds(2)) {
        let pids = await pool.status().filter { $0.function == function }.flatMap(\.pids)
        return pids.lazy.compactMap { ProcessEntry(pid: $0) }.first(where: isTheWorker)
    }
}

/// The pids of this process's children that are zombies, from /proc.
func zombieChildren() -> [Int32] {
    let me = getpid()
    return processTable().filter { $0.state == "Z" && $0.ppid == me }.map(\.pid)
}

/// The code a call failed with, or nil if it answered.
func failureCode(_ body: () async throws -> JSONValue) async -> WorkerError.Code? {
    do {
        _ = try await body()
        return nil
    } catch {
        return (error as? WorkerError)?.code
    }
}

/// Live processes (zombies included) whose command line mentions `text`, such as a fixture's path; from /proc.
/// A process that exec'd into something else no longer mentions it: `remains(of:)` is the check that sees those.
func processes(mentioning text: String) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self).contains(text)
    }
}

/// The pids the pool spawned for `function`, as they appear on the lines its workers wrote to stderr (the pool
/// tags each line with the pid from its spawn, not one the worker claims).
func spawnedPids(of function: String, in recorder: LogRecorder) -> Set<Int32> {
    Set(
        recorder.all.compactMap { entry in
            guard entry.metadata["function"] == "\(function)", let pid = entry.metadata["pid"] else { return nil }
            return Int32("\(pid)")
        })
}

/// What every misbehaving fixture must leave behind: nothing. Each worker the pool spawned for fixture `name`
/// (the pids on its logged stderr lines, which every such fixture writes, plus `pids`) is gone from the process
/// table with everything in its process group, zombies included; no process runs the fixture's file; and this
/// process has no zombie children. Records an issue naming what is left.
func expectNoStrays(
    _ name: String, _ recorder: LogRecorder, pids: [Int32] = [], sourceLocation: SourceLocation = #_sourceLocation
) async {
    let workers = spawnedPids(of: name, in: recorder).union(pids)
    if workers.isEmpty {
        Issue.record("no worker of \(name) was seen, so nothing could be checked", sourceLocation: sourceLocation)
    }
    let path = Paths.fixtures + "/" + name
    func left() -> [String] {
        let table = processTable()
        return workers.sorted().flatMap { remains(ofPid: $0, in: table).map { "\($0)" } }
            + processes(mentioning: path).map { "pid \($0) runs \(path)" }
            + zombieChildren().map { "zombie child \($0)" }
    }
    guard await !eventually(seconds: 15, { left().isEmpty }) else { return }
    Issue.record("\(name) left \(left()) (workers \(workers.sorted()))", sourceLocation: sourceLocation)
}

/// A blocking job on a thread of its own, started at once (not when Swift's two cooperative threads get to it).
final class OwnThread: Sendable {
    private let state = Mutex<(done: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    init(_ body: @escaping @Sendable () -> Void) {
        Thread.detachNewThread { [self] in
            body()
            state.withLock { state in
                state.done = true
                return state.waiter.take()
            }?.resume()
        }
    }

    /// Waits for the job to finish.
    func finished() async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { state in
                if state.done { return true }
                state.waiter = continuation
                return false
            }
            if now { continuation.resume() }
        }
    }
}

/// Watches one file for opens and closes (inotify(7)). execve(2) opens the file it runs, even when it then refuses
/// it with ETXTBSY, so this counts attempts to run an executable; a shell running a script holds it open until it
/// dies, so its last close is the shell's death.
final class OpenWatch: Sendable {
    enum Event: Sendable, Equatable {
        case open, close
    }
    private let fd: Int32

    init?(_ path: String) {
        fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
        guard fd >= 0 else { return nil }
        // Opens and closes alternate, so no two successive events are alike and none is merged with the one before.
        guard inotify_add_watch(fd, path, UInt32(IN_OPEN | IN_CLOSE_NOWRITE)) >= 0 else {
            close(fd)
            return nil
        }
    }

    deinit { close(fd) }

    /// Blocks (on a thread of the caller's own, not Swift's pool) until `count` opens have been seen or `seconds`
    /// passed; returns how many it saw.
    func waitForOpens(_ count: Int, seconds: Double) -> Int {
        var seen = 0
        _ = events(seconds: seconds) { event, _ in
            if event == .open { seen += 1 }
            return seen >= count
        }
        return seen
    }

    /// The opens seen so far, without waiting.
    func opensSoFar() -> Int {
        var seen = 0
        _ = events(seconds: 0) { event, _ in
            if event == .open { seen += 1 }
            return false
        }
        return seen
    }

    /// Blocks, passing each event and when it was read to `until`, until it says stop or `seconds` pass; returns
    /// whether it said stop.
    func events(seconds: Double, until: (Event, ContinuousClock.Instant) -> Bool) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                let at = ContinuousClock.now
                var offset = 0
                let header = MemoryLayout<inotify_event>.size
                while offset + header <= count {
                    let (mask, length) = buffer.withUnsafeBytes { raw in
                        (
                            raw.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self),
                            raw.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self)
                        )
                    }
                    offset += header + Int(length)
                    if mask & UInt32(IN_OPEN) != 0, until(.open, at) { return true }
                    if mask & UInt32(IN_CLOSE_NOWRITE) != 0, until(.close, at) { return true }
                }
                continue
            }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return false }
            var ready = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&ready, 1, Int32(min(100, max(1, left / .milliseconds(1)))))
        }
    }
}

/// A file that a gated request waits for (the `gate` knob of the `echo` and `gated` fixtures): the worker holds
/// the request, and stays busy, until the test opens the gate. Synchronization by event, not by a guessed sleep.
final class Gate: Sendable {
    private let directory = TemporaryDirectory()
    var path: String { directory.path + "/gate" }
    /// The payload value: `["gate": gate.json]`.
    var json: JSONValue { .string(path) }
    func open() { _ = FileManager.default.createFile(atPath: path, contents: nil) }
}

/// A temporary functions directory, removed when the test ends.
final class TemporaryDirectory: Sendable {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "statefn-workers-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// Writes an executable atomically (write aside, then rename), as a deploy should.
    func install(_ name: String, _ text: String) {
        let aside = path + "/." + name + ".new"
        _ = FileManager.default.createFile(
            atPath: aside, contents: Data(text.utf8), attributes: [.posixPermissions: 0o755])
        _ = rename(aside, path + "/" + name)
    }
}
