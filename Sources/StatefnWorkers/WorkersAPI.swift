// CONTRACT STUB: the public API the rest of statefn codes against. The Workers helper replaces these bodies
// (and splits them into one type per file).
import Logging
import StatefnJSON

public enum WorkerMode: String, Sendable {
    case warm, fork
}

/// A function's manifest (DESIGN.md section 3), with the documented defaults for missing fields.
public struct FunctionManifest: Sendable, Hashable {
    public var mode: WorkerMode = .warm
    public var timeoutMs: Int = 10_000
    public var minWorkers: Int = 0
    public var maxWorkers: Int = 4
    public var idleTimeoutMs: Int = 60_000
    public var maxRequests: Int = 0
    public var maxQueue: Int = 256
    public var queueTimeoutMs: Int = 5_000
    public var memoryMB: Int = 512
    public var env: [String: String] = [:]
    public var publicCommands: [String] = []
    public var maxStateBytes: Int = 1_048_576
    /// An action: no entity, no state.
    public var stateless: Bool = false
    public init() {}
    /// Validates a manifest document; unknown fields and wrong types are errors naming the field.
    public static func parse(_ value: JSONValue) throws(WorkerError) -> FunctionManifest { fatalError("stub") }
}

/// A function found in the functions directory.
public struct FunctionDefinition: Sendable, Hashable {
    public var name: String
    /// Absolute path of the executable (`functions/<name>` or `functions/<name>/handler`).
    public var executable: String
    /// The directory the worker runs in.
    public var workingDirectory: String
    public var manifest: FunctionManifest
    public init(name: String, executable: String, workingDirectory: String, manifest: FunctionManifest) {
        self.name = name
        self.executable = executable
        self.workingDirectory = workingDirectory
        self.manifest = manifest
    }
}

/// The result of scanning a functions directory.
public struct FunctionCatalog: Sendable {
    public var functions: [String: FunctionDefinition]
    /// Functions that could not be loaded, with the reason (bad manifest, not executable, ...).
    public var failures: [String: String]
    public init(functions: [String: FunctionDefinition] = [:], failures: [String: String] = [:]) {
        self.functions = functions
        self.failures = failures
    }
    /// Scans `directory` for both layouts of DESIGN.md section 3. Names that are not valid function names
    /// (`[a-z][a-z0-9_-]{0,62}`, e.g. `_sdk`, `README.md`) are ignored.
    public static func scan(directory: String) -> FunctionCatalog { fatalError("stub") }
}

/// Why a worker call failed. `description` is safe for clients; `detail` (exit status, stderr excerpt) is for logs.
public struct WorkerError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case invalidManifest = "invalid_manifest"
        case spawnFailed = "spawn_failed"  // 502
        case crashed  // the worker exited or closed stdout without answering: 502
        case invalidResponse = "invalid_response"  // not JSON, not an object, too long: 502
        case protocolViolation = "protocol_violation"  // wrong id, etc.: 502
        case timedOut = "timed_out"  // 504; the process group was killed
        case queueFull = "queue_full"  // 429
        case shuttingDown = "shutting_down"  // 503
    }
    public var code: Code
    public var detail: String
    public init(code: Code, detail: String) {
        self.code = code
        self.detail = detail
    }
    public var description: String { "worker error (\(code.rawValue))" }
}

/// Runs function workers: a warm pool per function (JSON-lines processes, one request in flight each, up to
/// `max_workers`), or one `posix_spawn`ed process per request in fork mode. Every worker runs in its own process
/// group; at the deadline the whole group is killed. stderr lines go to the logger, never to a client.
public final class WorkerPool: Sendable {
    public init(logger: Logger) { fatalError("stub") }
    /// Sends `request` (an object whose `"id"` is a string) to a worker of `function` and returns its answer: a JSON
    /// object whose `"id"` matched. Everything else becomes a `WorkerError`.
    public func invoke(_ function: FunctionDefinition, request: JSONValue) async throws(WorkerError) -> JSONValue {
        fatalError("stub")
    }
    /// Stops every worker (SIGTERM to its group, a short grace, then SIGKILL) and reaps them.
    public func shutdown() async {}
}
