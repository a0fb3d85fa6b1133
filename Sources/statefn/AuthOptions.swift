// `serve`'s authentication options (DESIGN.md section 6). Authentication is on unless --insecure-no-auth, which
// only a loopback address may use.
import ArgumentParser
import Logging
import StatefnAuth
import StatefnCore
import StatefnPostgres

struct AuthOptions: ParsableArguments {
    @Option(help: ArgumentHelp("JWKS file with the keys that sign JWTs (env STATEFN_JWKS_FILE).", valueName: "path"))
    var jwksFile: String?

    @Option(
        help: ArgumentHelp(
            "URL of a JWKS with the keys that sign JWTs; https, or http to a loopback host (env STATEFN_JWKS_URL).",
            valueName: "url"))
    var jwksUrl: String?

    @Option(
        help: ArgumentHelp(
            "OIDC issuer (Keycloak: https://host/realms/NAME); its /.well-known/openid-configuration names the JWKS,"
                + " and tokens must carry it as iss. https, or http to a loopback host (env STATEFN_OIDC_ISSUER).",
            valueName: "url"))
    var oidcIssuer: String?

    @Option(
        help: ArgumentHelp(
            "Required JWT audience: aud must be or include it (env STATEFN_JWT_AUDIENCE).", valueName: "aud"))
    var jwtAudience: String?

    @Option(help: ArgumentHelp("Required JWT issuer, iss (env STATEFN_JWT_ISSUER).", valueName: "iss"))
    var jwtIssuer: String?

    @Option(
        help: ArgumentHelp(
            "Requests per caller (API key or JWT subject), as N/s or N/min; over it, 429 with Retry-After. Off by"
                + " default (env STATEFN_RATE_LIMIT).", valueName: "rate"))
    var rateLimit: String?

    @Option(
        help: ArgumentHelp(
            "Burst allowed above --rate-limit; default: one second's worth (env STATEFN_RATE_BURST).", valueName: "n"))
    var rateBurst: String?

    @Option(
        help: ArgumentHelp(
            "Failed authentications per client address, as N/s or N/min, after a burst of 30; past it, an API key"
                + " not already known gets 429 with Retry-After instead of a database lookup. off: no limit"
                + " (env STATEFN_AUTH_FAILURE_LIMIT; default 2/s).", valueName: "rate"))
    var authFailureLimit: String?

    @Flag(
        help: ArgumentHelp(
            "Serve without authentication, for local play: every call is allowed. Only on a loopback address; logs a"
                + " warning (env STATEFN_INSECURE_NO_AUTH=1)."))
    var insecureNoAuth = false

    @Flag(
        help: ArgumentHelp(
            "Create a development API key with scope admin:* on first start, keep it in <data-dir>/dev-key (mode"
                + " 0600), and print it on every start (env STATEFN_DEV_KEY=1)."))
    var devKey = false

    var flags: [String: String?] {
        [
            "jwks-file": jwksFile, "jwks-url": jwksUrl, "oidc-issuer": oidcIssuer, "jwt-audience": jwtAudience,
            "jwt-issuer": jwtIssuer, "rate-limit": rateLimit, "rate-burst": rateBurst,
            "auth-failure-limit": authFailureLimit,
            "insecure-no-auth": insecureNoAuth ? "1" : nil, "dev-key": devKey ? "1" : nil,
        ]
    }
}

extension AuthSettings {
    /// The gateway's authenticator, or nil when authentication is off. JWT keys from a file must load; from a URL
    /// they are fetched now and retried later if the provider is not up yet.
    func authenticator(pool: PostgresPool, logger: Logger) async throws -> Authenticator? {
        if insecureNoAuth {
            logger.warning(
                "authentication is OFF (--insecure-no-auth): every caller may do everything; use it for local play only"
            )
            return nil
        }
        var jwt: JWTVerifier?
        let location: JWKSLocation? =
            if let jwksFile { .file(absolutePath(jwksFile)) } else if let jwksURL {
                .url(jwksURL)
            } else if let oidcIssuer {
                .oidcIssuer(oidcIssuer)
            } else { nil }
        if let location {
            var rules = JWTClaimRules(audience: audience, issuer: issuer)
            if rules.issuer == nil, let oidcIssuer { rules.issuer = oidcIssuer }
            let verifier = JWTVerifier(
                configuration: JWTConfiguration(location: location, claims: rules), logger: logger)
            do {
                try await verifier.refresh()
            } catch {
                if case .file = location { throw ValidationError("cannot load JWT keys from \(location): \(error)") }
                logger.error(
                    "JWT keys could not be loaded yet; they are fetched again when a token needs them",
                    metadata: ["source": "\(location)", "error": "\(error)"])
            }
            if audience == nil {
                logger.warning("no --jwt-audience: tokens issued for other services are accepted too")
            }
            jwt = verifier
        }
        let limiter = rateLimit.map { RateLimiter(rate: $0, burst: Double(rateBurst ?? max(1, Int($0.rounded(.up))))) }
        logger.info(
            "authentication on",
            metadata: [
                "api_keys": "on", "jwt": "\(location.map { "\($0)" } ?? "off")",
                "rate_limit": "\(rateLimit.map { "\($0)/s" } ?? "off")",
                "auth_failure_limit": "\(authFailureRate.map { "\($0)/s" } ?? "off")",
            ])
        let failures = authFailureRate.map { RateLimiter(rate: $0, burst: Double(Self.authFailureBurst)) }
        return Authenticator(
            apiKeys: APIKeyVerifier(store: APIKeyStore(pool: pool)), jwt: jwt, rateLimiter: limiter,
            failureLimiter: failures)
    }
}
