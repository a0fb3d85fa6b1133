// JWT claim rules, pure: the time is an argument.
import StatefnAuth
import StatefnJSON
import Testing

@Suite("JWT claims", .timeLimit(.minutes(1)))
struct ClaimTests {
    let rules = JWTClaimRules(audience: "statefn", issuer: "https://id.example")
    let now = 1_800_000_000.0

    func claims(_ extra: JSONObject = [:]) -> JSONValue {
        var object: JSONObject = [
            "sub": "alice", "exp": .integer(Int64(now) + 300), "iat": .integer(Int64(now)), "iss": "https://id.example",
            "aud": "statefn",
        ]
        for (key, value) in extra { object[key] = value.isNull ? nil : value }
        return .object(object)
    }

    func reason(_ value: JSONValue) -> AuthError.Reason? {
        do {
            _ = try rules.check(value, now: now)
            return nil
        } catch { return error.reason }
    }

    @Test("a good token gives its subject, scopes and expiry")
    func accepts() throws {
        let (principal, expires) = try rules.check(
            claims(["scope": "invoke:cart/{sub} read:*", "realm_access": ["roles": ["admin:cart", "offline_access"]]]),
            now: now)
        #expect(principal.subject == "alice")
        #expect(principal.scopes == ["invoke:cart/{sub}", "read:*", "admin:cart", "offline_access"])
        #expect(expires == now + 300)
    }

    @Test("exp is required, and checked with 60 s of skew")
    func expiry() {
        #expect(reason(claims(["exp": nil])) == .invalidClaims)
        #expect(reason(claims(["exp": .integer(Int64(now) - 30)])) == nil)
        #expect(reason(claims(["exp": .integer(Int64(now) - 61)])) == .expired)
    }

    @Test("nbf and iat in the future are refused past the skew")
    func notYet() {
        #expect(reason(claims(["nbf": .integer(Int64(now) + 30)])) == nil)
        #expect(reason(claims(["nbf": .integer(Int64(now) + 120)])) == .invalidClaims)
        #expect(reason(claims(["iat": .integer(Int64(now) + 120)])) == .invalidClaims)
        #expect(reason(claims(["nbf": "soon"])) == .invalidClaims)
    }

    @Test("iss must match; aud must be or include the gateway")
    func issuerAndAudience() {
        #expect(reason(claims(["iss": "https://evil.example"])) == .invalidClaims)
        #expect(reason(claims(["iss": nil])) == .invalidClaims)
        #expect(reason(claims(["aud": "other"])) == .invalidClaims)
        #expect(reason(claims(["aud": ["other", "statefn"]])) == nil)
        #expect(reason(claims(["aud": nil])) == .invalidClaims)
        #expect(reason(claims(["sub": nil])) == .invalidClaims)
        #expect(reason("not an object") == .malformed)
    }
}
