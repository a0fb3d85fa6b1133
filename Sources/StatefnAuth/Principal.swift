// Who is calling, once a credential has been accepted: what the scope check uses, what the worker receives as
// `principal`, and what the event log records.
import StatefnJSON

public struct Principal: Sendable, Hashable {
    /// The subject: a JWT's `sub`, or an API key's name.
    public var subject: String
    /// The scopes as granted, including ones this gateway does not understand (the worker may).
    public var scopes: [String]
    /// The scopes this gateway understands, for `permits`.
    public var parsedScopes: [Scope]
    /// The API key's id, when the caller used one; the rate limiter keys on it.
    public var keyID: String?

    public init(subject: String, scopes: [String], keyID: String? = nil) {
        self.subject = subject
        self.scopes = scopes
        self.parsedScopes = scopes.compactMap { Scope($0) }
        self.keyID = keyID
    }

    /// Whether any scope covers the call.
    public func permits(_ action: ScopeAction, function: String?, entity: String?) -> Bool {
        parsedScopes.contains { $0.covers(action: action, function: function, entity: entity, subject: subject) }
    }

    /// What the rate limiter counts against: the key, or the subject.
    public var rateLimitKey: String { keyID.map { "key:" + $0 } ?? "sub:" + subject }

    /// `{"sub", "scopes"}`, as DESIGN.md section 3 hands it to the worker.
    public var json: JSONValue {
        ["sub": .string(subject), "scopes": .array(scopes.map(JSONValue.string))]
    }
}
