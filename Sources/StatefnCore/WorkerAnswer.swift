// A worker's answer line, checked against the protocol (DESIGN.md section 3). Anything malformed is the worker's
// fault (502); a well-formed business error passes through with its own 4xx status.
import StatefnHTTP
import StatefnJSON

struct WorkerAnswer {
    enum StateChange {
        case unchanged
        case replace(JSONValue)
        case delete
    }
    struct Effect {
        var function: String
        var entity: String?
        var command: String
        var payload: JSONValue
        var delayMs: Int64
    }

    var reply: JSONValue
    var change: StateChange
    var events: [JSONValue]
    var effects: [Effect]

    var changesAnything: Bool {
        if case .unchanged = change { return !events.isEmpty || !effects.isEmpty }
        return true
    }

    init(_ answer: JSONValue) throws(GatewayError) {
        guard case .object(let object) = answer else { throw Self.broken("the answer is not an object") }
        if let error = object["error"] {
            throw Self.businessError(error)
        }
        reply = object["reply"] ?? .null
        switch (object["delete"], object["state"]) {
        case (.bool(true)?, _): change = .delete
        case (.bool(false)?, nil), (nil, nil): change = .unchanged
        case (.bool(false)?, let state?), (nil, let state?): change = .replace(state)
        case (_?, _): throw Self.broken("\"delete\" must be a boolean")
        }
        switch object["events"] {
        case nil, .null?: events = []
        case .array(let list)? where list.count <= 1000: events = list
        case .array?: throw Self.broken("more than 1000 events in one answer")
        default: throw Self.broken("\"events\" must be an array")
        }
        switch object["effects"] {
        case nil, .null?: effects = []
        case .array(let list)? where list.count <= 1000:
            effects = try list.map { effect throws(GatewayError) in try Self.effect(effect) }
        case .array?: throw Self.broken("more than 1000 effects in one answer")
        default: throw Self.broken("\"effects\" must be an array")
        }
    }

    private static func effect(_ value: JSONValue) throws(GatewayError) -> Effect {
        // Names are checked as a client's would be: a row that could never run is refused before it commits.
        guard let function = value["function"]?.stringValue, (try? Route.validateFunction(function)) != nil else {
            throw broken("an effect needs a valid \"function\" name")
        }
        guard let command = value["command"]?.stringValue, (try? Route.validateCommand(command)) != nil else {
            throw broken("an effect needs a valid \"command\" name")
        }
        let entity: String?
        switch value["entity"] {
        case nil, .null?: entity = nil
        case .string(let id)?:
            guard (try? Route.validateEntity(id)) != nil else { throw broken("an effect's \"entity\" is not a valid id") }
            entity = id
        default: throw broken("an effect's \"entity\" must be a string")
        }
        let delay: Int64
        switch value["delay_ms"] {
        case nil, .null?: delay = 0
        case let number?:
            // At most about ten years: a timer further out is a bug, and would overflow the database's interval.
            guard let milliseconds = number.integerValue, (0...315_360_000_000).contains(milliseconds) else {
                throw broken("an effect's \"delay_ms\" must be a whole number of milliseconds from 0 to ten years")
            }
            delay = milliseconds
        }
        return Effect(
            function: function, entity: entity, command: command, payload: value["payload"] ?? .null, delayMs: delay)
    }

    /// A refusal decided by the gateway itself, handled like a function's business error (nothing commits, and
    /// an answer from a cached snapshot is confirmed against the database first).
    static func refusal(_ status: Int, _ message: String) -> GatewayError {
        var error = GatewayError(status, message)
        error.isBusinessError = true
        return error
    }

    private static func businessError(_ error: JSONValue) -> GatewayError {
        guard let status = error["status"]?.integerValue, (400...499).contains(status) else {
            return broken("an \"error\" must carry a 4xx \"status\"")
        }
        let message = error["message"]?.stringValue ?? HTTPResponse.reasonPhrase(Int(status))
        var gatewayError = GatewayError(Int(status), message)
        gatewayError.isBusinessError = true
        if let code = error["code"]?.stringValue, !code.isEmpty { gatewayError.code = code }
        return gatewayError
    }

    private static func broken(_ why: String) -> GatewayError {
        GatewayError(502, "the function's worker broke the protocol", logDetail: why)
    }
}
