// The checks on a verified token's claims (DESIGN.md section 6): `exp` required, `nbf` and `iat` within the clock
// skew, `iss` and `aud` as configured, and the scopes from `scope`, `scp` and Keycloak's `realm_access.roles`.
// Pure: the time is an argument.
import StatefnJSON

public struct JWTClaimRules: Sendable {
    /// `aud` must be this or contain it; nil checks nothing.
    public var audience: String?
    /// `iss` must be exactly this; nil checks nothing.
    public var issuer: String?
    /// Seconds of clock difference tolerated on `exp`, `nbf` and `iat`.
    public var skewSeconds: Double = 60

    public init(audience: String? = nil, issuer: String? = nil) {
        self.audience = audience
        self.issuer = issuer
    }

    /// The caller and the token's expiry (seconds since 1970), or why the claims are refused.
    public func check(_ claims: JSONValue, now: Double) throws(AuthError) -> (principal: Principal, expires: Double) {
        guard claims.objectValue != nil else { throw AuthError(.malformed, "the token's payload is not a JSON object") }
        guard let exp = claims["exp"]?.doubleValue else { throw AuthError(.invalidClaims, "the token has no exp") }
        guard now <= exp + skewSeconds else { throw AuthError(.expired, "the token has expired") }
        if let nbf = claims["nbf"] {
            guard let nbf = nbf.doubleValue else { throw AuthError(.invalidClaims, "nbf is not a number") }
            guard nbf <= now + skewSeconds else { throw AuthError(.invalidClaims, "the token is not valid yet (nbf)") }
        }
        if let iat = claims["iat"] {
            guard let iat = iat.doubleValue else { throw AuthError(.invalidClaims, "iat is not a number") }
            guard iat <= now + skewSeconds else {
                throw AuthError(.invalidClaims, "the token was issued in the future")
            }
        }
        if let issuer {
            guard claims["iss"]?.stringValue == issuer else {
                throw AuthError(.invalidClaims, "the token's issuer is not accepted")
            }
        }
        if let audience {
            let accepted: Bool
            switch claims["aud"] {
            case .string(let aud)?: accepted = aud == audience
            case .array(let auds)?: accepted = auds.contains(.string(audience))
            default: accepted = false
            }
            guard accepted else {
                throw AuthError(.invalidClaims, "the token's audience does not include this gateway")
            }
        }
        guard let subject = claims["sub"]?.stringValue, !subject.isEmpty else {
            throw AuthError(.invalidClaims, "the token has no sub")
        }
        return (Principal(subject: subject, scopes: Self.scopes(claims)), exp)
    }

    /// `scope` (space-separated), `scp` (a string or an array), then `realm_access.roles`, without repeats.
    static func scopes(_ claims: JSONValue) -> [String] {
        var found: [String] = []
        func add(_ value: JSONValue?) {
            switch value {
            case .string(let text)?: found += text.split(separator: " ").map(String.init)
            case .array(let items)?: found += items.compactMap(\.stringValue)
            default: break
            }
        }
        add(claims["scope"])
        add(claims["scp"])
        add(claims["realm_access"]?["roles"])
        var seen = Set<String>()
        return found.filter { seen.insert($0).inserted }
    }
}
