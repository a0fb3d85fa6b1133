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
        case .array(let list)?: events = list
        default: throw Self.broken("\"events\" must be an array")
        }
        switch object["effects"] {
        case nil, .null?: effects = []
        case .array(let list)?: effects = try list.map { effect throws(GatewayError) in try Self.effect(effect) }
        default: throw Self.broken("\"effects\" must be an array")
        }
    }

    private static func effect(_ value: JSONValue) throws(GatewayError) -> Effect {
        guard let function = value["function"]?.stringValue, Route.isFunctionName(function),
            let command = value["command"]?.stringValue
        else { throw broken("an effect needs a valid \"function\" and \"command\"") }
        let entity: String?
        switch value["entity"] {
        case nil, .null?: entity = nil
        case .string(let id)?: entity = id
        default: throw broken("an effect's \"entity\" must be a string")
        }
        let delay = value["delay_ms"]?.integerValue ?? 0
        guard delay >= 0 else { throw broken("an effect's \"delay_ms\" must not be negative") }
        return Effect(
            function: function, entity: entity, command: command, payload: value["payload"] ?? .null, delayMs: delay)
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
