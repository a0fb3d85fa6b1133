// Scopes (DESIGN.md section 6): `<action>:<function>[/<entity>]`, parsed once when a credential is accepted and
// matched on every call. Pure, so every rule is unit-tested.
import StatefnText

/// What a call needs: `invoke` for commands, queries and actions; `read` for raw state and lists; `admin` for
/// everything, `/v1/functions` included.
public enum ScopeAction: String, Sendable, CaseIterable {
    case invoke, read, admin
}

/// One granted scope, such as `invoke:cart/{sub}`, `read:*` or `admin:*`.
public struct Scope: Sendable, Hashable, CustomStringConvertible {
    public enum Function: Sendable, Hashable {
        case any
        case named(String)
    }
    public enum Entity: Sendable, Hashable {
        /// No `/<entity>` part: every entity of the function.
        case any
        case exact(String)
        /// `prefix*`: ids that start with `prefix` (an empty prefix, `*`, is every entity).
        case prefix(String)
        /// `{sub}`: only the entity whose id is the caller's own subject.
        case subject
    }

    public var action: ScopeAction
    public var function: Function
    public var entity: Entity

    public init(action: ScopeAction, function: Function, entity: Entity = .any) {
        self.action = action
        self.function = function
        self.entity = entity
    }

    /// Parses a scope; nil for anything else. Tokens carry other roles too (Keycloak's `offline_access`, say), so
    /// callers skip what does not parse rather than refuse the whole credential.
    public init?(_ text: some StringProtocol) {
        guard let colon = text.firstIndex(of: ":"), let action = ScopeAction(rawValue: String(text[..<colon])) else {
            return nil
        }
        let rest = text[text.index(after: colon)...]
        let functionPart: Substring
        let entityPart: Substring?
        if let slash = rest.firstIndex(of: "/") {
            functionPart = Substring(rest[..<slash])
            entityPart = Substring(rest[rest.index(after: slash)...])
        } else {
            functionPart = Substring(rest)
            entityPart = nil
        }
        if functionPart == "*" {
            function = .any
        } else if Self.isFunctionName(functionPart) {
            function = .named(String(functionPart))
        } else {
            return nil
        }
        switch entityPart {
        case nil: entity = .any
        case let part? where part.isEmpty: return nil
        case let part? where part == "{sub}": entity = .subject
        case let part? where part.hasSuffix("*"): entity = .prefix(String(part.dropLast()))
        case let part?:
            guard part.utf8.count <= 256,
                !part.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
            else { return nil }
            entity = .exact(String(part))
        }
        self.action = action
    }

    /// Whether this scope lets `subject` do `action` on `function` (and `entity`, if the call has one).
    ///
    /// `admin` covers every action. A call with no entity (an action, a listing, `/v1/functions`) needs a scope
    /// without an entity restriction, since a restricted scope names entities the call cannot be checked against.
    /// `function == nil` means a gateway-wide call (`/v1/functions`), which only a `*` function covers.
    public func covers(action needed: ScopeAction, function name: String?, entity id: String?, subject: String) -> Bool
    {
        guard action == needed || action == .admin else { return false }
        switch (function, name) {
        case (.any, _): break
        case (.named(let granted), let name?) where granted.utf8.elementsEqual(name.utf8): break
        default: return false
        }
        switch (entity, id) {
        case (.any, _): return true
        case (_, nil): return false
        // Bytes, not `String ==` or `hasPrefix` (canonical equivalence): `{sub}` for "\u{212A}ate" (KELVIN SIGN)
        // must not reach "Kate", which the database keeps as another entity (DESIGN.md section 9).
        case (.exact(let granted), let id?): return granted.utf8.elementsEqual(id.utf8)
        case (.prefix(let prefix), let id?): return id.utf8.starts(with: prefix.utf8)
        case (.subject, let id?): return !subject.isEmpty && id.utf8.elementsEqual(subject.utf8)
        }
    }

    public var description: String {
        var text = action.rawValue + ":"
        switch function {
        case .any: text += "*"
        case .named(let name): text += name
        }
        switch entity {
        case .any: break
        case .exact(let id): text += "/" + id
        case .prefix(let prefix): text += "/" + prefix + "*"
        case .subject: text += "/{sub}"
        }
        return text
    }

    /// `[a-z][a-z0-9_-]{0,62}`, the catalog's rule for function names.
    static func isFunctionName(_ name: Substring) -> Bool { Names.isFunctionName(name) }
}
