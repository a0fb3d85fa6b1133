// `serve`'s authentication options (DESIGN.md section 6). Authentication is on unless --insecure-no-auth, which
// only a loopback address may use.
import ArgumentParser
import Logging
import StatefnAuth
import StatefnPostgres

struct AuthOptions: ParsableArguments {
    @Option(
        name: .customLong("jwks-file"),
        help: ArgumentHelp("JWKS file with the keys that sign JWTs (env STATEFN_JWKS_FILE).", valueName: "path"))
    var jwksFileText: String = Environment.value("STATEFN_JWKS_FILE") ?? ""

    @Option(
        name: .customLong("jwks-url"),
        help: ArgumentHelp("URL of a JWKS with the keys that sign JWTs (env STATEFN_JWKS_URL).", valueName: "url"))
    var jwksUrlText: String = Environment.value("STATEFN_JWKS_URL") ?? ""

    @Option(
        name: .customLong("oidc-issuer"),
        help: ArgumentHelp(
            "OIDC issuer (Keycloak: https://host/realms/NAME); its /.well-known/openid-configuration names the JWKS, and tokens must carry it as iss (env STATEFN_OIDC_ISSUER).",
            valueName: "url"))
    var oidcIssuerText: String = Environment.value("STATEFN_OIDC_ISSUER") ?? ""

    @Option(
        name: .customLong("jwt-audience"),
        help: ArgumentHelp(
            "Required JWT audience: aud must be or include it (env STATEFN_JWT_AUDIENCE).", valueName: "aud"))
    var jwtAudienceText: String = Environment.value("STATEFN_JWT_AUDIENCE") ?? ""

    @Option(
        name: .customLong("jwt-issuer"),
        help: ArgumentHelp("Required JWT issuer, iss (env STATEFN_JWT_ISSUER).", valueName: "iss"))
    var jwtIssuerText: String = Environment.value("STATEFN_JWT_ISSUER") ?? ""

    @Option(
        name: .customLong("rate-limit"),
        help: ArgumentHelp(
            "Requests per caller (API key or JWT subject), as N/s or N/min; over it, 429 with Retry-After. Off by default (env STATEFN_RATE_LIMIT).",
            valueName: "rate"))
    var rateLimitText: String = Environment.value("STATEFN_RATE_LIMIT") ?? ""

    @Option(
        name: .customLong("rate-burst"),
        help: ArgumentHelp(
            "Burst allowed above --rate-limit; default: one second's worth (env STATEFN_RATE_BURST).", valueName: "n"))
    var rateBurstValue: Int = Environment.value("STATEFN_RATE_BURST").flatMap { Int($0) } ?? 0

    @Flag(
        help: ArgumentHelp(
            "Serve without authentication, for local play: every call is allowed. Only on a loopback address; logs a warning (env STATEFN_INSECURE_NO_AUTH=1)."
        ))
    var insecureNoAuth = false

    @Flag(
        help: ArgumentHelp(
            "Create a development API key with scope admin:* on first start, keep it in <data-dir>/dev-key (mode 0600), and print it on every start (env STATEFN_DEV_KEY=1)."
        ))
    var devKey = false

    var jwksFile: String? { jwksFileText.isEmpty ? nil : jwksFileText }
    var jwksUrl: String? { jwksUrlText.isEmpty ? nil : jwksUrlText }
    var oidcIssuer: String? { oidcIssuerText.isEmpty ? nil : oidcIssuerText }
    var jwtAudience: String? { jwtAudienceText.isEmpty ? nil : jwtAudienceText }
    var jwtIssuer: String? { jwtIssuerText.isEmpty ? nil : jwtIssuerText }
    var rateLimit: String? { rateLimitText.isEmpty ? nil : rateLimitText }
    var rateBurst: Int? { rateBurstValue == 0 ? nil : rateBurstValue }
    var authDisabled: Bool { insecureNoAuth || Environment.value("STATEFN_INSECURE_NO_AUTH") == "1" }
    var wantsDevKey: Bool { devKey || Environment.value("STATEFN_DEV_KEY") == "1" }

    func validate(listenHost host: String) throws {
        let sources = [jwksFile, jwksUrl, oidcIssuer].compactMap { $0 }
        guard sources.count <= 1 else {
            throw ValidationError("give at most one of --jwks-file, --jwks-url and --oidc-issuer")
        }
        if let rateLimit, RateLimiter.parseRate(rateLimit) == nil {
            throw ValidationError("--rate-limit must look like 100/s or 600/min, got \(rateLimit)")
        }
        if let rateBurst, rateBurst < 1 { throw ValidationError("--rate-burst must be at least 1") }
        if authDisabled, !Self.isLoopback(host) {
            throw ValidationError(
                "--insecure-no-auth only works on a loopback address (127.0.0.1, ::1, localhost), not \(host)")
        }
    }

    static func isLoopback(_ host: String) -> Bool {
        let bare = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        return bare == "localhost" || bare == "::1" || bare.hasPrefix("127.")
    }

    /// The gateway's authenticator, or nil when authentication is off. JWT keys from a file must load; from a URL
    /// they are fetched now and retried later if the provider is not up yet.
    func authenticator(pool: PostgresPool, logger: Logger) async throws -> Authenticator? {
        if authDisabled {
            logger.warning(
                "authentication is OFF (--insecure-no-auth): every caller may do everything; use it for local play only"
            )
            return nil
        }
        var jwt: JWTVerifier?
        let location: JWKSLocation? =
            if let jwksFile { .file(absolutePath(jwksFile)) } else if let jwksUrl {
                .url(jwksUrl)
            } else if let oidcIssuer {
                .oidcIssuer(oidcIssuer)
            } else { nil }
        if let location {
            var rules = JWTClaimRules(audience: jwtAudience, issuer: jwtIssuer)
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
            if jwtAudience == nil {
                logger.warning("no --jwt-audience: tokens issued for other services are accepted too")
            }
            jwt = verifier
        }
        var limiter: RateLimiter?
        if let rateLimit, let rate = RateLimiter.parseRate(rateLimit) {
            limiter = RateLimiter(rate: rate, burst: Double(rateBurst ?? max(1, Int(rate.rounded(.up)))))
        }
        logger.info(
            "authentication on",
            metadata: [
                "api_keys": "on", "jwt": "\(location.map { "\($0)" } ?? "off")",
                "rate_limit": "\(rateLimit ?? "off")",
            ])
        return Authenticator(apiKeys: APIKeyVerifier(store: APIKeyStore(pool: pool)), jwt: jwt, rateLimiter: limiter)
    }
}
