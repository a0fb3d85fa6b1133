// JWT verification with real keys and real signatures: each algorithm, each refusal, and a JWKS served over real
// HTTP that rotates while the verifier runs (on a fake clock for the once-a-minute refresh rule).
import Foundation
import Logging
import StatefnAuth
import StatefnHTTP
import StatefnJSON
import StatefnTestSupport
import Synchronization
import Testing

@Suite("JWT verification", .timeLimit(.minutes(2)))
struct JWTVerifierTests {
    static let logger = Logger(label: "test-jwt")

    func verifier(
        jwks: [UInt8], clock: @escaping AuthClock = SystemAuthClock.now, maxTokenBytes: Int? = nil
    ) async throws -> JWTVerifier {
        let path = NSTemporaryDirectory() + "jwks-" + UUID().uuidString + ".json"
        try Data(jwks).write(to: URL(fileURLWithPath: path))
        var configuration = JWTConfiguration(
            location: .file(path), claims: JWTClaimRules(audience: "statefn", issuer: "https://id.example"))
        if let maxTokenBytes { configuration.maxTokenBytes = maxTokenBytes }
        let verifier = JWTVerifier(configuration: configuration, logger: Self.logger, clock: clock)
        try await verifier.refresh()
        try? FileManager.default.removeItem(atPath: path)
        return verifier
    }

    func reason(_ verifier: JWTVerifier, _ token: String) async -> AuthError.Reason? {
        await refusal(verifier, token)?.reason
    }

    func refusal(_ verifier: JWTVerifier, _ token: String) async -> AuthError? {
        do {
            _ = try await verifier.verify(token)
            return nil
        } catch { return error }
    }

    @Test("A token without kid is checked against the keys of its algorithm, and only those")
    func tokenWithoutKid() async throws {
        let (first, second, stranger) = (try TestKeys(), try TestKeys(), try TestKeys())
        let verifier = try await verifier(
            jwks: TestKeys.jwks([try first.rsaJWK(kid: "r1"), try second.rsaJWK(kid: "r2"), first.ecJWK(kid: "e1")]))
        let token = try await second.signRSA(.valid(), kid: nil)
        var header = String(token.split(separator: ".")[0]).replacingOccurrences(of: "-", with: "+")
            .replacingOccurrences(of: "_", with: "/")
        header += String(repeating: "=", count: (4 - header.count % 4) % 4)
        let decoded = try #require(Data(base64Encoded: header))
        #expect(!String(decoding: decoded, as: UTF8.self).contains("kid"))
        #expect(await refusal(verifier, token) == nil)
        #expect(await reason(verifier, try await stranger.signRSA(.valid(), kid: nil)) == .badSignature)
        // No HS256 key in the set: nothing to try, whatever the token says.
        let onlyRSA = try await self.verifier(jwks: TestKeys.jwks([try first.rsaJWK(kid: "r1")]))
        let hmac = try await first.signHMAC(.valid(), kid: "h1")
        let unnamed = hmac.split(separator: ".")
        let bareHeader = TestKeys.base64url(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
        #expect(await reason(onlyRSA, bareHeader + "." + unnamed[1] + "." + unnamed[2]) == .unknownKey)
    }

    @Test("RS256, ES256 and HS256 tokens verify, with scopes from scope and realm_access.roles")
    func accepts() async throws {
        let keys = try TestKeys()
        let verifier = try await verifier(
            jwks: TestKeys.jwks([try keys.rsaJWK(kid: "r1"), keys.ecJWK(kid: "e1"), keys.hmacJWK(kid: "h1")]))
        #expect(Set(verifier.kids) == ["r1", "e1", "h1"])
        var claims = TestClaims.valid(scope: "invoke:cart/{sub}")
        claims.realm_access = .init(roles: ["read:*", "offline_access"])
        for token in [
            try await keys.signRSA(claims, kid: "r1"), try await keys.signEC(claims, kid: "e1"),
            try await keys.signHMAC(claims, kid: "h1"),
        ] {
            let principal = try await verifier.verify(token)
            #expect(principal.subject == "alice")
            #expect(principal.scopes == ["invoke:cart/{sub}", "read:*", "offline_access"])
            #expect(try await verifier.verify(token) == principal, "a cached result is the same")
        }
    }

    @Test("alg is never trusted: HS256 with the RSA public key, alg none, and a foreign key are refused")
    func refusesForgeries() async throws {
        let keys = try TestKeys()
        let verifier = try await verifier(jwks: TestKeys.jwks([try keys.rsaJWK(kid: "r1"), keys.ecJWK(kid: "e1")]))
        let claims = TestClaims.valid()
        #expect(await reason(verifier, try await keys.confusedToken(claims, kid: "r1")) == .badSignature)
        #expect(await reason(verifier, try TestKeys.unsignedToken(claims, kid: "r1")) == .badSignature)
        let stranger = try TestKeys()
        #expect(await reason(verifier, try await stranger.signRSA(claims, kid: "r1")) == .badSignature)
        #expect(await reason(verifier, try await stranger.signEC(claims, kid: "e1")) == .badSignature)
        // An ES256 signature presented as RS256 for an EC key: the key's algorithm wins.
        let ecToken = try await keys.signEC(claims, kid: "e1")
        let parts = ecToken.split(separator: ".")
        let rsHeader = TestKeys.base64url(Array(#"{"alg":"RS256","kid":"e1"}"#.utf8))
        #expect(await reason(verifier, rsHeader + "." + parts[1] + "." + parts[2]) == .badSignature)
        // A tampered payload breaks the signature.
        let good = try await keys.signRSA(claims, kid: "r1")
        let goodParts = good.split(separator: ".")
        let otherPayload = TestKeys.base64url(try JSONEncoder().encode(TestClaims.valid(sub: "mallory")))
        #expect(await reason(verifier, goodParts[0] + "." + otherPayload + "." + goodParts[2]) == .badSignature)
    }

    @Test("each 401 reason")
    func reasons() async throws {
        let keys = try TestKeys()
        let now = Date().timeIntervalSince1970
        let verifier = try await verifier(jwks: TestKeys.jwks([try keys.rsaJWK(kid: "r1")]))
        #expect(await reason(verifier, "not.a.jwt") == .malformed)
        #expect(await reason(verifier, "abc") == .malformed)
        #expect(await reason(verifier, try await keys.signRSA(.valid(), kid: "nope")) == .unknownKey)
        #expect(await reason(verifier, try await keys.signRSA(.valid(now: now - 3600), kid: "r1")) == .expired)
        var future = TestClaims.valid()
        future.nbf = Int(now) + 600
        #expect(await reason(verifier, try await keys.signRSA(future, kid: "r1")) == .invalidClaims)
        #expect(await reason(verifier, try await keys.signRSA(.valid(audience: "other"), kid: "r1")) == .invalidClaims)
        #expect(
            await reason(verifier, try await keys.signRSA(.valid(issuer: "https://evil"), kid: "r1")) == .invalidClaims)
        var noExp = TestClaims.valid()
        noExp.exp = nil
        #expect(await reason(verifier, try await keys.signRSA(noExp, kid: "r1")) == .invalidClaims)
    }

    @Test("the 8 KiB cap: a signed token of up to 8192 bytes verifies; the same one just over is refused for its size")
    func sizeCap() async throws {
        let keys = try TestKeys()
        let jwks = TestKeys.jwks([keys.ecJWK(kid: "e1")])
        let verifier = try await verifier(jwks: jwks)
        let cap = JWTConfiguration(location: .file("/"), claims: JWTClaimRules()).maxTokenBytes
        #expect(cap == 8192)
        // One large but valid claim: a long scope the gateway keeps for the worker. ES256 signatures are always 64
        // bytes, so the token's length depends on the claim alone; find the longest claim that fits.
        func token(filler: Int) async throws -> String {
            try await keys.signEC(
                .valid(scope: "invoke:cart x" + String(repeating: "y", count: filler)), kid: "e1")
        }
        var filler = (cap - (try await token(filler: 0)).utf8.count) * 3 / 4 - 16
        while try await token(filler: filler + 1).utf8.count <= cap { filler += 1 }
        while try await token(filler: filler).utf8.count > cap { filler -= 1 }
        let fits = try await token(filler: filler)
        let over = try await token(filler: filler + 1)
        #expect(fits.utf8.count <= cap && fits.utf8.count > cap - 4)
        #expect(over.utf8.count > cap && over.utf8.count <= cap + 4)

        let principal = try await verifier.verify(fits)
        #expect(principal.subject == "alice")
        #expect(principal.scopes == ["invoke:cart", "x" + String(repeating: "y", count: filler)])
        let refused = try #require(await refusal(verifier, over), "a \(over.utf8.count)-byte token was accepted")
        #expect(refused.reason == .malformed)
        #expect(refused.status == 401)
        #expect(refused.detail == "the token is over 8192 bytes", "refused for its size, not its form")
        // Nothing but its size: a verifier with a larger cap takes the very same token.
        let roomier = try await self.verifier(jwks: jwks, maxTokenBytes: 16384)
        #expect(try await roomier.verify(over).scopes.last == "x" + String(repeating: "y", count: filler + 1))
    }

    @Test("a JWKS served over HTTP rotates: a new kid is picked up, an old key works until it is removed")
    func rotation() async throws {
        let old = try TestKeys()
        let new = try TestKeys()
        let document = Mutex(TestKeys.jwks([try old.rsaJWK(kid: "old")]))
        let fetches = Atomic(0)
        let server = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0), logger: Self.logger,
            handler: { _ in
                fetches.add(1, ordering: .relaxed)
                return HTTPResponse(
                    status: 200, headers: [(name: "Content-Type", value: "application/json")],
                    body: document.withLock { $0 })
            })
        try server.start()
        defer { Task { await server.stop(gracePeriod: .seconds(1)) } }
        let now = Mutex(Date().timeIntervalSince1970)
        let verifier = JWTVerifier(
            configuration: JWTConfiguration(
                location: .url("http://127.0.0.1:\(server.port)/jwks.json"),
                claims: JWTClaimRules(audience: "statefn", issuer: "https://id.example")),
            logger: Self.logger, clock: { now.withLock { $0 } })
        try await verifier.refresh()
        #expect(fetches.load(ordering: .relaxed) == 1)
        let clock = now.withLock { $0 }
        let oldToken = try await old.signRSA(.valid(now: clock, lifetime: 3600), kid: "old")
        let newToken = try await new.signEC(.valid(now: clock, lifetime: 3600), kid: "new")
        #expect(try await verifier.verify(oldToken).subject == "alice")

        // The provider adds a key. The first unknown kid refreshes right away (the last fetch was at start-up,
        // so advance past the minute); a second unknown kid within the minute does not fetch again.
        document.withLock { $0 = TestKeys.jwks([try! old.rsaJWK(kid: "old"), new.ecJWK(kid: "new")]) }
        now.withLock { $0 += 61 }
        #expect(try await verifier.verify(newToken).subject == "alice")
        #expect(fetches.load(ordering: .relaxed) == 2)
        #expect(try await verifier.verify(oldToken).subject == "alice", "the old key stays valid")
        let strangerToken = try await new.signEC(.valid(now: clock, lifetime: 3600), kid: "stranger")
        #expect(await reason(verifier, strangerToken) == .unknownKey)
        #expect(await reason(verifier, strangerToken) == .unknownKey)
        #expect(fetches.load(ordering: .relaxed) == 2, "at most one refresh a minute")

        // The provider removes the old key; once the keys are fetched again, its tokens stop working.
        document.withLock { $0 = TestKeys.jwks([new.ecJWK(kid: "new")]) }
        now.withLock { $0 += 61 }
        try await verifier.refresh()
        #expect(await reason(verifier, oldToken) == .unknownKey)
        #expect(try await verifier.verify(newToken).subject == "alice")
    }

    /// A JWKS endpoint that sends without end (or lies about its size) costs the gateway 1 MiB, not a download:
    /// the body is cut off as it arrives past the cap, declared length or not.
    @Test("a JWKS document over 1 MiB is cut off while it downloads")
    func oversizeDocumentIsCutOffWhileReading() async throws {
        final class Count: Sendable { let value = Atomic(0) }
        let written = Count()
        let server = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0), logger: Self.logger,
            handler: { request in
                if request.path == "/declared" {
                    return HTTPResponse(status: 200, body: Array(repeating: UInt8(ascii: " "), count: (1 << 20) + 1))
                }
                // Chunked, no length, 64 KiB at a time, up to 256 MiB.
                let stream = HTTPStream(bufferLimit: 1 << 20)
                Task.detached {
                    let chunk = [UInt8](repeating: UInt8(ascii: " "), count: 64 << 10)
                    while stream.isOpen, written.value.load(ordering: .relaxed) < 256 << 20 {
                        if stream.pendingBytes < 512 << 10, stream.write(chunk) {
                            written.value.add(chunk.count, ordering: .relaxed)
                        } else {
                            try? await Task.sleep(for: .milliseconds(2))
                        }
                    }
                    stream.finish()
                }
                var response = HTTPResponse(status: 200, headers: [(name: "Content-Type", value: "application/json")])
                response.stream = stream
                return response
            })
        try server.start()
        defer { Task { await server.stop(gracePeriod: .seconds(1)) } }
        for path in ["/endless", "/declared"] {
            let verifier = JWTVerifier(
                configuration: JWTConfiguration(
                    location: .url("http://127.0.0.1:\(server.port)\(path)"),
                    claims: JWTClaimRules(audience: "statefn", issuer: "https://id.example")),
                logger: Self.logger)
            let started = ContinuousClock.now
            do {
                try await verifier.refresh()
                Issue.record("\(path): a document over 1 MiB was accepted")
            } catch {
                #expect("\(error)".contains("over 1 MiB"), "\(path): \(error)")
            }
            // The error says it was the 1 MiB cap, and `sent` below that the rest was never read; the clock only
            // says it was not the fetch's 10 s timeout, with room for a loaded machine.
            #expect(ContinuousClock.now - started < .seconds(9), "\(path): cut off, not read to its end or timeout")
        }
        let sent = written.value.load(ordering: .relaxed)
        #expect(sent < 32 << 20, "only what was in flight was sent: \(sent)")
    }

    @Test("a JWKS with unusable keys keeps the usable ones")
    func skipsUnusable() async throws {
        let keys = try TestKeys()
        var weak = keys.hmacJWK(kid: "weak")
        if case .object(var object) = weak {
            object["k"] = "c2hvcnQ"
            weak = .object(object)
        }
        var ps = try keys.rsaJWK(kid: "ps")
        if case .object(var object) = ps {
            object["alg"] = "PS256"
            ps = .object(object)
        }
        let set = try await JWTKeySet.parse(
            TestKeys.jwks([
                try keys.rsaJWK(kid: "r1"), weak, ps, ["kty": "RSA", "kid": "enc", "use": "enc", "n": "x", "e": "y"],
            ]))
        #expect(set.kids == ["r1"])
        #expect(set.skipped.count == 3)
    }
}
