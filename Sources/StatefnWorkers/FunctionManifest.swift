// A function's manifest (DESIGN.md section 3): parsed from `<name>.json` or `function.json`, strictly, so a typo in a
// field name is reported at load time instead of silently falling back to a default.
import StatefnJSON
import StatefnText

public enum WorkerMode: String, Sendable {
    case warm, fork
}

/// A function's manifest (DESIGN.md section 3), with the documented defaults for missing fields.
///
/// `memoryMB` is enforced with RLIMIT_DATA (not RLIMIT_AS, which breaks V8, the JVM and Go: they reserve far more
/// address space than they use) and by watching each worker's resident set.
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
    /// The longest answer line; a longer one is a 502 and the worker is replaced.
    public var maxResponseBytes: Int = 8 << 20
    /// With a value above 0, a warm worker gets no request until it prints `{"ready":true}`, and is killed if it
    /// has not within this time. 0: it is ready at once (DESIGN.md section 3).
    public var initTimeoutMs: Int = 0
    /// Entities untouched this long expire (their state is deleted; 0: never).
    public var stateTTLMs: Int = 0
    /// Events older than this expire, the newest of each entity excepted (0: never).
    public var eventsTTLMs: Int = 0
    /// What the function's effects may call, as `invoke:` scopes (DESIGN.md section 3). Empty: its own entities
    /// only (`invoke:<name>`), which is how a workflow steps itself.
    public var effectScopes: [String] = []
    public init() {}

    /// Validates a manifest document; unknown fields and wrong types are errors naming the field.
    public static func parse(_ value: JSONValue) throws(WorkerError) -> FunctionManifest {
        guard case .object(let object) = value else { throw invalid("the manifest must be a JSON object") }
        var manifest = FunctionManifest()
        for (key, value) in object {
            switch key {
            case "mode":
                guard let text = value.stringValue, let mode = WorkerMode(rawValue: text) else {
                    throw invalid("field mode: must be \"warm\" or \"fork\"")
                }
                manifest.mode = mode
            case "timeout_ms": manifest.timeoutMs = try integer(value, key, in: 1...3_600_000)
            case "min_workers": manifest.minWorkers = try integer(value, key, in: 0...1024)
            case "max_workers": manifest.maxWorkers = try integer(value, key, in: 1...1024)
            case "idle_timeout_ms": manifest.idleTimeoutMs = try integer(value, key, in: 0...86_400_000)
            case "max_requests": manifest.maxRequests = try integer(value, key, in: 0...Int(Int32.max))
            case "max_queue": manifest.maxQueue = try integer(value, key, in: 0...1_000_000)
            case "queue_timeout_ms": manifest.queueTimeoutMs = try integer(value, key, in: 0...3_600_000)
            case "memory_mb": manifest.memoryMB = try integer(value, key, in: 1...1_048_576)
            case "max_state_bytes": manifest.maxStateBytes = try integer(value, key, in: 1...(1 << 30))
            case "max_response_bytes": manifest.maxResponseBytes = try integer(value, key, in: 1024...(1 << 30))
            case "init_timeout_ms": manifest.initTimeoutMs = try integer(value, key, in: 0...3_600_000)
            case "state_ttl_ms": manifest.stateTTLMs = try integer(value, key, in: 0...(3650 * 86_400_000))
            case "events_ttl_ms": manifest.eventsTTLMs = try integer(value, key, in: 0...(3650 * 86_400_000))
            case "effect_scopes": manifest.effectScopes = try effectScopes(value)
            case "stateless":
                guard let flag = value.boolValue else { throw invalid("field stateless: must be true or false") }
                manifest.stateless = flag
            case "env": manifest.env = try environment(value)
            case "public": manifest.publicCommands = try commandNames(value)
            default: throw invalid("field \(key): unknown field")
            }
        }
        guard manifest.minWorkers <= manifest.maxWorkers else {
            throw invalid("field min_workers: must not exceed max_workers (\(manifest.maxWorkers))")
        }
        return manifest
    }

    /// Every field, defaults included, as `GET /v1/functions` shows it.
    public var json: JSONValue {
        var env = JSONObject()
        // Values may be credentials the function needs; the listing names them only.
        for name in self.env.keys.sorted() { env[name] = "<redacted>" }
        return [
            "mode": .string(mode.rawValue), "timeout_ms": .integer(Int64(timeoutMs)),
            "min_workers": .integer(Int64(minWorkers)), "max_workers": .integer(Int64(maxWorkers)),
            "idle_timeout_ms": .integer(Int64(idleTimeoutMs)), "max_requests": .integer(Int64(maxRequests)),
            "max_queue": .integer(Int64(maxQueue)), "queue_timeout_ms": .integer(Int64(queueTimeoutMs)),
            "memory_mb": .integer(Int64(memoryMB)), "env": .object(env),
            "public": .array(publicCommands.map { .string($0) }), "max_state_bytes": .integer(Int64(maxStateBytes)),
            "stateless": .bool(stateless), "max_response_bytes": .integer(Int64(maxResponseBytes)),
            "init_timeout_ms": .integer(Int64(initTimeoutMs)),
            "state_ttl_ms": .integer(Int64(stateTTLMs)), "events_ttl_ms": .integer(Int64(eventsTTLMs)),
            "effect_scopes": .array(effectScopes.map { .string($0) }),
        ]
    }

    private static func invalid(_ detail: String) -> WorkerError { WorkerError(.invalidManifest, detail) }

    private static func integer(_ value: JSONValue, _ key: String, in range: ClosedRange<Int>) throws(WorkerError) -> Int {
        guard let number = value.integerValue else { throw invalid("field \(key): must be an integer") }
        guard number >= range.lowerBound, number <= range.upperBound else {
            throw invalid("field \(key): must be between \(range.lowerBound) and \(range.upperBound), got \(number)")
        }
        return Int(number)
    }

    private static func environment(_ value: JSONValue) throws(WorkerError) -> [String: String] {
        guard let object = value.objectValue else { throw invalid("field env: must be an object of strings") }
        var env: [String: String] = [:]
        for (name, value) in object {
            // A name with "=" or NUL would smuggle a different variable into the environment block.
            guard !name.isEmpty, !name.utf8.contains(UInt8(ascii: "=")), !name.utf8.contains(0) else {
                throw invalid("field env: invalid variable name \"\(name)\"")
            }
            guard let text = value.stringValue, !text.utf8.contains(0) else {
                throw invalid("field env: \(name) must be a string")
            }
            env[name] = text
        }
        return env
    }

    private static func commandNames(_ value: JSONValue) throws(WorkerError) -> [String] {
        guard let array = value.arrayValue else { throw invalid("field public: must be an array of command names") }
        var names: [String] = []
        for element in array {
            guard let name = element.stringValue, isCommandName(name) else {
                throw invalid("field public: \(element.encodedString()) is not a command name")
            }
            names.append(name)
        }
        return names
    }

    /// `invoke:<function or *>[/<entity>]` only: an effect never carries `read` or `admin`.
    private static func effectScopes(_ value: JSONValue) throws(WorkerError) -> [String] {
        guard let array = value.arrayValue else { throw invalid("field effect_scopes: must be an array of scopes") }
        var scopes: [String] = []
        for element in array {
            guard let scope = element.stringValue, isEffectScope(scope) else {
                throw invalid(
                    "field effect_scopes: \(element.encodedString()) is not an invoke:<function or *>[/<entity>] scope")
            }
            scopes.append(scope)
        }
        return scopes
    }

    /// The grammar StatefnAuth's `Scope` parses, for `invoke` only: a function name or `*`, then optionally `/` and
    /// a non-empty entity part (an id, a `prefix*`, or `{sub}`) of at most 256 bytes without control characters.
    /// Checked here, so that a typo fails the function's load instead of dead-lettering its effects later.
    public static func isEffectScope(_ scope: String) -> Bool {
        guard scope.hasPrefix("invoke:") else { return false }
        let rest = scope.dropFirst("invoke:".count)
        let function = rest.prefix { $0 != "/" }
        guard function == "*" || FunctionCatalog.isFunctionName(String(function)) else { return false }
        guard rest.count > function.count else { return true }
        let entity = rest.dropFirst(function.count + 1)
        return !entity.isEmpty && entity.utf8.count <= 256
            && !entity.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }

    /// `[A-Za-z][A-Za-z0-9_.-]{0,62}` (DESIGN.md section 2).
    static func isCommandName(_ name: String) -> Bool { Names.isCommandName(name) }
}
