// The front door's decision (DESIGN.md section 6): who is calling (API key or JWT), whether their bucket has a token
// left, and whether a scope covers the call. The gateway asks before it reads any state or runs any worker.

public final class Authenticator: Sendable {
    public let apiKeys: APIKeyVerifier
    public let jwt: JWTVerifier?
    public let rateLimiter: RateLimiter?
    /// Failed authentications per client address (`--auth-failure-limit`). An address out of tokens gets no more
    /// API-key lookups in the database (429 instead) until it has some again; keys already in the cache, and JWTs,
    /// which cost no lookup, still pass, so one bad client behind a shared address locks nobody else out.
    public let failureLimiter: RateLimiter?

    public init(apiKeys: APIKeyVerifier, jwt: JWTVerifier?, rateLimiter: RateLimiter?, failureLimiter: RateLimiter? = nil) {
        self.apiKeys = apiKeys
        self.jwt = jwt
        self.rateLimiter = rateLimiter
        self.failureLimiter = failureLimiter
    }

    /// The caller named by an `Authorization` header value, or nil when there is none. Throws `AuthError` for
    /// bad credentials, and a database error when an API key cannot be looked up. `address` is the client's, for
    /// the limit on failures.
    public func authenticate(authorization: String?, from address: String = "") async throws -> Principal? {
        guard let authorization else { return nil }
        do {
            let token = try Self.bearerToken(authorization)
            if token.hasPrefix(APIKey.prefix) {
                var refusal: AuthError?
                if let failureLimiter, case .limited(let retryAfter) = failureLimiter.peek(address) {
                    refusal = AuthError(
                        .rateLimited, "too many failed authentications from this address; try again later",
                        retryAfter: retryAfter)
                }
                return try await apiKeys.verify(token, lookupRefused: refusal)
            }
            guard let jwt else {
                throw AuthError(.malformed, "not an API key (sfn_…), and JWT verification is not configured")
            }
            return try await jwt.verify(token)
        } catch let error as AuthError where error.reason != .rateLimited {
            _ = failureLimiter?.take(address)
            throw error
        }
    }

    /// Takes a token from the caller's bucket, if rate limiting is on.
    public func admit(_ principal: Principal) throws(AuthError) {
        guard let rateLimiter else { return }
        if case .limited(let retryAfter) = rateLimiter.take(principal.rateLimitKey) {
            throw AuthError(.rateLimited, "rate limit reached; try again later", retryAfter: retryAfter)
        }
    }

    /// 403 unless a scope covers the call.
    public static func authorize(
        _ principal: Principal, _ action: ScopeAction, function: String?, entity: String?
    ) throws(AuthError) {
        guard principal.permits(action, function: function, entity: entity) else {
            let target = (function ?? "*") + (entity.map { "/" + $0 } ?? "")
            throw AuthError(.forbidden, "no scope allows \(action.rawValue) on \(target)")
        }
    }

    /// `Bearer <token>`, the scheme in any case (RFC 7235).
    static func bearerToken(_ header: String) throws(AuthError) -> String {
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            throw AuthError(.malformed, "the Authorization header must be \"Bearer <token>\"")
        }
        let token = parts[1].drop(while: { $0 == " " })
        guard !token.isEmpty, !token.contains(" ") else {
            throw AuthError(.malformed, "the Authorization header must be \"Bearer <token>\"")
        }
        return String(token)
    }
}
