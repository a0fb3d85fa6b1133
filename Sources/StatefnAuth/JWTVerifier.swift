// Verifies a JWT and turns it into a principal. The signature check is jwt-kit's (swift-crypto underneath); this
// type decides which key and algorithm apply, never trusting the token's `alg`, checks the claims, and caches each
// verified token until min(exp, 30 s) so the request path rarely pays for a signature check.
import Logging
import StatefnJSON
import Synchronization

public struct JWTConfiguration: Sendable {
    public var location: JWKSLocation
    public var claims: JWTClaimRules
    /// Larger tokens are refused before anything is decoded.
    public var maxTokenBytes = 8192
    /// How long a verified token is trusted without checking it again (and never past its `exp`).
    public var cacheSeconds: Double = 30
    /// An unknown `kid` refetches the keys at most this often.
    public var minRefreshSeconds: Double = 60
    /// Keys are refetched in the background this often anyway, so a removed key stops working.
    public var backgroundRefreshSeconds: Double = 300

    public init(location: JWKSLocation, claims: JWTClaimRules) {
        self.location = location
        self.claims = claims
    }
}

public final class JWTVerifier: Sendable {
    private struct Keys {
        var set = JWTKeySet()
        /// Bumped on every reload, so cached verifications made with older keys are checked again.
        var generation = 0
        var loadedAt: Double?
        var lastAttempt: Double?
        var inFlight: Task<Void, Never>?
    }
    private struct CachedToken {
        var principal: Principal
        var until: Double
        var generation: Int
    }

    private let configuration: JWTConfiguration
    private let source: JWKSSource
    private let clock: AuthClock
    private let logger: Logger
    private let keys = Mutex(Keys())
    private let verified = Mutex<[String: CachedToken]>([:])
    private let maxCachedTokens = 100_000
    /// The issuer to require: the configured one, else the one OIDC discovery declared.
    private let discoveredIssuer = Mutex<String?>(nil)

    public init(configuration: JWTConfiguration, logger: Logger, clock: @escaping AuthClock = SystemAuthClock.now) {
        self.configuration = configuration
        self.source = JWKSSource(location: configuration.location)
        self.logger = logger
        self.clock = clock
    }

    /// Loads the keys now. Throws if they cannot be loaded (the caller decides whether that stops start-up).
    public func refresh() async throws {
        keys.withLock { $0.lastAttempt = clock() }
        try await reload()
    }

    /// The key ids currently loaded.
    public var kids: [String] { keys.withLock { $0.set.kids } }

    public func verify(_ token: String) async throws(AuthError) -> Principal {
        guard token.utf8.count <= configuration.maxTokenBytes else {
            throw AuthError(.malformed, "the token is over \(configuration.maxTokenBytes) bytes")
        }
        let now = clock()
        let generation = keys.withLock { $0.generation }
        if let hit = verified.withLock({ $0[token] }), hit.generation == generation, now < hit.until {
            return hit.principal
        }
        refreshInBackgroundIfStale(now: now)

        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = Base64URL.decode(parts[0]),
            let header = try? JSONValue.parse(headerBytes, limits: JSONLimits(maxBytes: 4096, maxDepth: 4)),
            header.objectValue != nil
        else { throw AuthError(.malformed, "not a JWT: expected base64url header.payload.signature") }
        guard let alg = header["alg"]?.stringValue else { throw AuthError(.malformed, "the token has no alg") }
        guard alg.lowercased() != "none" else {
            throw AuthError(.badSignature, "unsigned tokens (alg none) are refused")
        }
        guard let algorithm = JWTAlgorithmName(rawValue: alg) else {
            throw AuthError(.badSignature, "algorithm \(alg) is not accepted")
        }
        let kid = header["kid"]?.stringValue
        var (set, currentGeneration) = keys.withLock { ($0.set, $0.generation) }
        if set.keys(kid: kid, algorithm: algorithm).isEmpty {
            await refreshForUnknownKey()
            (set, currentGeneration) = keys.withLock { ($0.set, $0.generation) }
        }
        let candidates = set.keys(kid: kid, algorithm: algorithm)
        guard !candidates.isEmpty else {
            throw AuthError(
                .unknownKey, kid.map { "no key with kid \($0)" } ?? "no \(alg) key to check a token without a kid")
        }
        // The key decides the algorithm: an HS256 token "signed" with an RS256 key's public half stops here.
        guard candidates.allSatisfy({ $0.algorithm == algorithm }) else {
            throw AuthError(.badSignature, "the token's alg is not its key's algorithm")
        }
        guard let signature = Base64URL.decode(parts[2]) else {
            throw AuthError(.malformed, "the signature is not base64url")
        }
        let signed = Array(token.utf8.prefix(parts[0].utf8.count + 1 + parts[1].utf8.count))
        let valid = candidates.contains { (try? $0.verifier.verify(signature, signs: signed)) ?? false }
        guard valid else { throw AuthError(.badSignature, "the token's signature does not verify") }

        guard let payloadBytes = Base64URL.decode(parts[1]),
            let claims = try? JSONValue.parse(payloadBytes, limits: JSONLimits(maxBytes: 1 << 16, maxDepth: 16))
        else { throw AuthError(.malformed, "the token's payload is not base64url JSON") }
        var rules = configuration.claims
        if rules.issuer == nil { rules.issuer = discoveredIssuer.withLock { $0 } }
        let (principal, expires) = try rules.check(claims, now: now)

        let until = min(expires + rules.skewSeconds, now + configuration.cacheSeconds)
        verified.withLock { cache in
            if cache.count >= maxCachedTokens { cache.removeAll(keepingCapacity: true) }
            cache[token] = CachedToken(principal: principal, until: until, generation: currentGeneration)
        }
        return principal
    }

    // MARK: Keys

    private func reload() async throws {
        let (document, issuer) = try await source.fetch()
        let set = try await JWTKeySet.parse(document)
        for reason in set.skipped {
            logger.warning(
                "JWKS key skipped", metadata: ["source": "\(configuration.location)", "reason": "\(reason)"])
        }
        if let issuer, case .oidcIssuer = configuration.location { discoveredIssuer.withLock { $0 = issuer } }
        let now = clock()
        keys.withLock {
            $0.set = set
            $0.generation += 1
            $0.loadedAt = now
        }
        logger.info(
            "JWKS loaded",
            metadata: ["source": "\(configuration.location)", "kids": "\(set.kids.joined(separator: ","))"])
    }

    /// Refetches the keys for an unknown `kid`, at most once per `minRefreshSeconds`; callers arriving while a
    /// refetch runs wait for it instead of starting another.
    private func refreshForUnknownKey() async {
        let task: Task<Void, Never>? = keys.withLock { state in
            if let running = state.inFlight { return running }
            let now = clock()
            if let last = state.lastAttempt, now >= last, now - last < configuration.minRefreshSeconds { return nil }
            state.lastAttempt = now
            let task = Task { await self.reloadLogging() }
            state.inFlight = task
            return task
        }
        await task?.value
    }

    private func refreshInBackgroundIfStale(now: Double) {
        let start: Bool = keys.withLock { state in
            guard state.inFlight == nil, let last = state.lastAttempt,
                now - last >= configuration.backgroundRefreshSeconds
            else { return false }
            state.lastAttempt = now
            state.inFlight = Task { await self.reloadLogging() }
            return true
        }
        if start { logger.debug("JWKS refresh started", metadata: ["source": "\(configuration.location)"]) }
    }

    private func reloadLogging() async {
        do {
            try await reload()
        } catch {
            logger.error("JWKS refresh failed", metadata: ["source": "\(configuration.location)", "error": "\(error)"])
        }
        keys.withLock { $0.inFlight = nil }
    }
}
