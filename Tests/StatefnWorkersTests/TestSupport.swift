// Shared helpers for the worker tests: where the real and fixture functions are, a log handler that keeps what the
// workers wrote to stderr, and /proc checks for process groups and zombies.
import Foundation
import Logging
import StatefnJSON
import Synchronization

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

/// A worker request as the gateway builds it (DESIGN.md section 3).
func request(
    _ id: String, function: String = "test", command: String = "run", payload: JSONValue = nil,
    state: JSONValue = nil, readonly: Bool = false
) -> JSONValue {
    [
        "id": .string(id), "function": .string(function), "entity": "e1", "command": .string(command),
        "payload": payload, "state": state, "version": 0, "readonly": .bool(readonly),
        "principal": ["sub": "tester", "scopes": []], "deadline_ms": 10_000,
    ]
}

/// Keeps every log event, so tests can read what workers wrote to stderr.
final class LogRecorder: Sendable {
    struct Entry: Sendable {
        let message: String
        let metadata: Logger.Metadata
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

/// Waits (up to `seconds`) for `condition`, polling; for effects that happen asynchronously, like reaping.
func eventually(seconds: Double = 10, _ condition: () async -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return await condition()
}

/// The pids of this process's children that are zombies, from /proc.
func zombieChildren() -> [Int32] {
    let me = getpid()
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return false }
        // Fields after the command name: state, ppid, ...
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 && fields[0] == "Z" && Int32(fields[1]) == me
    }
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
func processes(mentioning text: String) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self).contains(text)
    }
}

/// No process of fixture `name` is left, none of the groups in `groups` has a member, and this process has no
/// zombie children: what every misbehaving fixture must leave behind.
func leavesNoStrays(_ name: String, groups: [Int32] = []) async -> Bool {
    let path = Paths.fixtures + "/" + name
    return await eventually(seconds: 15) {
        processes(mentioning: path).isEmpty && groups.allSatisfy { !groupExists($0) } && zombieChildren().isEmpty
    }
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

/// The process group a timeout terminated, from its detail ("… process group 1234 terminated").
func terminatedGroup(_ error: WorkerError) -> Int32? {
    let words = error.detail.split(separator: " ")
    guard let index = words.firstIndex(of: "terminated"), index > 0 else { return nil }
    return Int32(words[index - 1])
}
