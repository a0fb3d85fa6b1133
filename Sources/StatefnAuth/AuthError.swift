// Why a call was refused at the front door: 401 (with the reason a client can act on), 403 or 429. The messages are
// safe for clients: they never echo a secret or a token.

public struct AuthError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: String, Sendable {
        /// No Authorization header.
        case missing
        /// Not `Bearer <token>`, not a well-formed key or JWT, or too large.
        case malformed
        /// Past `exp` (JWT) or `expires_at` (API key).
        case expired
        /// The signature does not verify, or the token's `alg` is not its key's algorithm.
        case badSignature = "bad_signature"
        /// No key with this id (API key) or `kid` (JWT).
        case unknownKey = "unknown_key"
        case revoked
        /// A JWT whose `iss`, `aud`, `nbf` or `iat` is not acceptable.
        case invalidClaims = "invalid_claims"
        /// A valid caller without a scope for this call.
        case forbidden
        /// The caller's token bucket is empty.
        case rateLimited = "rate_limited"
    }

    public var reason: Reason
    /// A sentence for the client.
    public var detail: String
    /// Seconds to wait, for `rateLimited`.
    public var retryAfter: Int?

    public init(_ reason: Reason, _ detail: String, retryAfter: Int? = nil) {
        self.reason = reason
        self.detail = detail
        self.retryAfter = retryAfter
    }

    public var status: Int {
        switch reason {
        case .forbidden: 403
        case .rateLimited: 429
        default: 401
        }
    }

    /// The response headers: `WWW-Authenticate` (RFC 6750) on 401 and 403, `Retry-After` on 429.
    public var headers: [(name: String, value: String)] {
        switch reason {
        case .rateLimited:
            return [(name: "Retry-After", value: String(retryAfter ?? 1))]
        case .forbidden:
            return [(name: "WWW-Authenticate", value: #"Bearer realm="statefn", error="insufficient_scope""#)]
        case .missing:
            return [
                (
                    name: "WWW-Authenticate",
                    value: #"Bearer realm="statefn", error_description="missing credentials""#
                )
            ]
        default:
            let description = reason.rawValue.replacingUnderscores
            return [
                (
                    name: "WWW-Authenticate",
                    value: #"Bearer realm="statefn", error="invalid_token", error_description="\#(description)""#
                )
            ]
        }
    }

    public var description: String { "\(reason.rawValue): \(detail)" }
}

extension String {
    fileprivate var replacingUnderscores: String { String(map { $0 == "_" ? " " : $0 }) }
}
