// Real keys for the JWT tests: a fresh RSA-2048 key, a P-256 key and a 256-bit HMAC secret, their JWKS entries,
// and tokens signed by jwt-kit, the way an identity provider would sign them.
import Foundation
import JWTKit
import StatefnJSON
import _CryptoExtras

public struct TestClaims: JWTPayload {
    public struct Roles: Codable, Sendable {
        public var roles: [String]
        public init(roles: [String]) { self.roles = roles }
    }
    public var sub: String?
    public var exp: Int?
    public var nbf: Int?
    public var iat: Int?
    public var iss: String?
    public var aud: [String]?
    public var scope: String?
    public var realm_access: Roles?

    public func verify(using algorithm: some JWTAlgorithm) throws {}

    public static func valid(
        sub: String = "alice", scope: String? = "invoke:*", now: Double = Date().timeIntervalSince1970,
        lifetime: Int = 300, audience: String = "statefn", issuer: String = "https://id.example"
    ) -> TestClaims {
        TestClaims(
            sub: sub, exp: Int(now) + lifetime, nbf: nil, iat: Int(now), iss: issuer, aud: [audience], scope: scope,
            realm_access: nil)
    }
}

public struct TestKeys: Sendable {
    public let rsa: JWTKit.Insecure.RSA.PrivateKey
    public let ec: ES256PrivateKey
    public let hmac: [UInt8]

    public init() throws {
        rsa = try JWTKit.Insecure.RSA.PrivateKey(backing: _RSA.Signing.PrivateKey(keySize: .bits2048))
        ec = ES256PrivateKey()
        hmac = (0..<32).map { _ in UInt8.random(in: 0...255) }
    }

    public static func base64url(_ bytes: some DataProtocol) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(
            of: "/", with: "_"
        )
        .replacingOccurrences(of: "=", with: "")
    }

    public func rsaJWK(kid: String) throws -> JSONValue {
        let (n, e) = try rsa.publicKey.getKeyPrimitives()
        return [
            "kty": "RSA", "kid": .string(kid), "use": "sig", "alg": "RS256", "n": .string(Self.base64url(n)),
            "e": .string(Self.base64url(e)),
        ]
    }

    public func ecJWK(kid: String) -> JSONValue {
        let parameters = ec.publicKey.parameters!
        return [
            "kty": "EC", "kid": .string(kid), "crv": "P-256", "x": .string(parameters.x), "y": .string(parameters.y),
        ]
    }

    public func hmacJWK(kid: String) -> JSONValue {
        ["kty": "oct", "kid": .string(kid), "alg": "HS256", "k": .string(Self.base64url(hmac))]
    }

    public static func jwks(_ keys: [JSONValue]) -> [UInt8] { JSONValue.object(["keys": .array(keys)]).encoded() }

    /// RS256; with `kid` nil the header names no key, as some OIDC providers sign (RFC 7515 makes kid optional).
    public func signRSA(_ claims: TestClaims, kid: String?) async throws -> String {
        let signers = JWTKeyCollection()
        await signers.add(rsa: rsa, digestAlgorithm: .sha256, kid: kid.map { JWKIdentifier(string: $0) })
        return try await signers.sign(claims, kid: kid.map { JWKIdentifier(string: $0) })
    }

    public func signEC(_ claims: TestClaims, kid: String) async throws -> String {
        let signers = JWTKeyCollection()
        await signers.add(ecdsa: ec, kid: JWKIdentifier(string: kid))
        return try await signers.sign(claims, kid: JWKIdentifier(string: kid))
    }

    public func signHMAC(_ claims: TestClaims, kid: String, secret: [UInt8]? = nil) async throws -> String {
        let signers = JWTKeyCollection()
        await signers.add(
            hmac: HMACKey(from: secret ?? hmac), digestAlgorithm: .sha256, kid: JWKIdentifier(string: kid))
        return try await signers.sign(claims, kid: JWKIdentifier(string: kid))
    }

    /// The classic confusion attack: an HS256 token whose HMAC secret is the RSA key's public PEM.
    public func confusedToken(_ claims: TestClaims, kid: String) async throws -> String {
        try await signHMAC(claims, kid: kid, secret: Array(rsa.publicKey.pemRepresentation.utf8))
    }

    /// An unsigned token, `alg: none`.
    public static func unsignedToken(_ claims: TestClaims, kid: String) throws -> String {
        let header = base64url(Array(#"{"alg":"none","typ":"JWT","kid":"\#(kid)"}"#.utf8))
        let payload = base64url(try JSONEncoder().encode(claims))
        return header + "." + payload + "."
    }
}
