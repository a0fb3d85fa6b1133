// The v1 URL grammar (DESIGN.md section 2): turns a method and a raw, percent-encoded path into a route, or into
// the status a client should get. Pure: no I/O, so it is tested directly.
import StatefnWorkers
import StatefnText

/// What a request asks for, with names already validated.
public enum Route: Equatable, Sendable {
    /// `POST /v1/{function}/{entity}/{command}` (readonly: false) or `GET …` (readonly: true, a query).
    case command(function: String, entity: String, command: String, readonly: Bool)
    /// `POST /v1/{function}/{command}`: a stateless action.
    case action(function: String, command: String)
    /// `GET /v1/{function}/{entity}`: raw state and version.
    case rawState(function: String, entity: String)
    /// `DELETE /v1/{function}/{entity}`: deletes the state (admin; If-Match applies).
    case delete(function: String, entity: String)
    /// `GET /v1/{function}/{entity}/events`: the event log, or with `Accept: text/event-stream` the live feed.
    case events(function: String, entity: String)
    /// `GET /v1/{function}?prefix=&after=&limit=`: entity ids, versions and update times.
    case list(function: String)
    /// `GET /v1/outbox?state=pending|dead`.
    case outbox
    /// `POST /v1/outbox/{id}/retry`: a dead row made pending again.
    case outboxRetry(id: String)
    /// `GET /v1/functions`: the functions, their manifests and live pool state.
    case functions
    case healthz
    case readyz
    /// `GET /metrics`: Prometheus's text format.
    case metrics
    /// `GET /openapi.yaml`: the API description.
    case openAPI
}

/// Why a path or method was refused: 400 (bad name), 404 (no such route) or 405 (with the methods allowed).
public struct RouteError: Error, Equatable, Sendable {
    public var status: Int
    public var detail: String
    public var allow: [String]
    init(_ status: Int, _ detail: String, allow: [String] = []) {
        self.status = status
        self.detail = detail
        self.allow = allow
    }
}

extension Route {
    public static func parse(method: String, path: String) throws(RouteError) -> Route {
        let method = method == "HEAD" ? "GET" : method
        guard path.utf8.starts(with: "/v1/".utf8) else {
            switch path {
            case "/healthz": return try only("GET", method, .healthz)
            case "/readyz": return try only("GET", method, .readyz)
            case "/metrics": return try only("GET", method, .metrics)
            case "/openapi.yaml": return try only("GET", method, .openAPI)
            default: throw RouteError(404, "no route for \(path)")
            }
        }
        var segments: [String] = []
        segments.reserveCapacity(3)
        // By bytes: every request pays for this, and a String split would cost more than the rest of routing.
        var failure: RouteError?
        var contiguous = path
        contiguous.withUTF8 { bytes in
            var start = 4
            for end in 4...bytes.count where end == bytes.count || bytes[end] == UInt8(ascii: "/") {
                guard end > start, segments.count < 4 else {
                    failure = RouteError(404, "no route for \(path)")
                    return
                }
                guard let decoded = percentDecode(UnsafeBufferPointer(rebasing: bytes[start..<end])) else {
                    failure = RouteError(400, "the path is not valid percent-encoded UTF-8")
                    return
                }
                segments.append(decoded)
                start = end + 1
            }
        }
        if let failure { throw failure }
        switch segments.count {
        case 1 where segments[0] == "functions":
            return try only("GET", method, .functions)
        case 1 where segments[0] == "outbox":
            return try only("GET", method, .outbox)
        case 1:
            try validateFunction(segments[0])
            return try only("GET", method, .list(function: segments[0]))
        case 3 where segments[0] == "outbox" && segments[2] == "retry":
            return try only("POST", method, .outboxRetry(id: segments[1]))
        case 3 where segments[2] == "events":
            try validateFunction(segments[0])
            try validateEntity(segments[1])
            return try only("GET", method, .events(function: segments[0], entity: segments[1]))
        case 2:
            let (function, second) = (segments[0], segments[1])
            try validateFunction(function)
            switch method {
            case "POST":
                try validateCommand(second)
                return .action(function: function, command: second)
            case "GET":
                try validateEntity(second)
                return .rawState(function: function, entity: second)
            case "DELETE":
                try validateEntity(second)
                return .delete(function: function, entity: second)
            default: throw RouteError(405, "\(method) is not allowed here", allow: ["GET", "POST", "DELETE"])
            }
        case 3:
            let (function, entity, command) = (segments[0], segments[1], segments[2])
            try validateFunction(function)
            try validateEntity(entity)
            try validateCommand(command)
            guard method == "GET" || method == "POST" else {
                throw RouteError(405, "\(method) is not allowed here", allow: ["GET", "POST"])
            }
            return .command(function: function, entity: entity, command: command, readonly: method == "GET")
        default:
            throw RouteError(404, "no route for \(path)")
        }
    }

    private static func only(_ allowed: String, _ method: String, _ route: Route) throws(RouteError) -> Route {
        guard method == allowed else { throw RouteError(405, "\(method) is not allowed here", allow: [allowed]) }
        return route
    }

    /// `[a-z][a-z0-9_-]{0,62}`; `functions` and `outbox` are reserved for their routes.
    public static func validateFunction(_ name: String) throws(RouteError) {
        guard isFunctionName(name) else {
            throw RouteError(400, "invalid function name: it must match [a-z][a-z0-9_-]{0,62}")
        }
        guard !reservedFunctionNames.contains(name) else { throw RouteError(404, "'\(name)' is a reserved name") }
    }

    public static let reservedFunctionNames: Set<String> = ["functions", "outbox"]

    /// The same rule the function catalog applies to file names.
    public static func isFunctionName(_ name: String) -> Bool { FunctionCatalog.isFunctionName(name) }

    /// `[A-Za-z][A-Za-z0-9_.-]{0,62}`; `events` is reserved for the event-log route.
    public static func validateCommand(_ name: String) throws(RouteError) {
        guard Names.isCommandName(name) else { throw RouteError(400, "invalid command name: it must match [A-Za-z][A-Za-z0-9_.-]{0,62}") }
        guard name != "events" else { throw RouteError(404, "'events' is a reserved command name") }
    }

    /// 1–256 bytes of UTF-8 with no `/`, no control characters and no format characters (general category Cf:
    /// bidi overrides, zero-width spaces), which would make logs and listings show one id as another.
    public static func validateEntity(_ id: String) throws(RouteError) {
        let count = id.utf8.count
        guard (1...256).contains(count) else { throw RouteError(400, "invalid entity id: it must be 1 to 256 bytes") }
        // ASCII has no format characters: its controls and `/` are all there is to find, without Unicode tables.
        if id.utf8.allSatisfy({ $0 < 0x80 }) {
            if id.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) {
                throw RouteError(400, "invalid entity id: no control characters")
            }
            if id.utf8.contains(UInt8(ascii: "/")) { throw RouteError(400, "invalid entity id: no '/'") }
            return
        }
        for scalar in id.unicodeScalars {
            switch scalar.properties.generalCategory {
            case .control:
                throw RouteError(400, "invalid entity id: no control characters")
            case .format:
                throw RouteError(
                    400, "invalid entity id: no Unicode format characters (U+\(String(scalar.value, radix: 16, uppercase: true)))")
            default:
                if scalar == "/" { throw RouteError(400, "invalid entity id: no '/'") }
            }
        }
    }

    /// Decodes `%XX` escapes; nil if an escape is malformed or the result is not UTF-8.
    static func percentDecode(_ segment: UnsafeBufferPointer<UInt8>) -> String? {
        guard segment.contains(UInt8(ascii: "%")) else { return String(validating: segment, as: UTF8.self) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(segment.count)
        var iterator = segment.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(Hex.value), let low = iterator.next().flatMap(Hex.value) else {
                return nil
            }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }
}
