// The keys that may sign tokens, from a JWKS document. Each key is tied to one algorithm when it is loaded (its
// `alg`, or the one its type implies), so a token's own `alg` header never chooses how it is checked.
import JWTKit
import Logging
import StatefnJSON

/// The algorithms statefn accepts. Anything else, `none` included, is refused.
public enum JWTAlgorithmName: String, Sendable, CaseIterable {
    case rs256 = "RS256"
    case es256 = "ES256"
    case hs256 = "HS256"
}

/// One verification key: its algorithm and jwt-kit's verifier for it.
public struct JWTVerificationKey: Sendable {
    public var kid: String?
    public var algorithm: JWTAlgorithmName
    let verifier: any JWTAlgorithm
}

public struct JWTKeySet: Sendable {
    public private(set) var keys: [JWTVerificationKey] = []
    /// Keys refused while loading, with why (for the log).
    public private(set) var skipped: [String] = []

    public init() {}

    /// The keys that may have signed a token: the one it names by `kid` (whatever its algorithm, so that a
    /// mismatch is refused as such); without a kid (RFC 7515 makes it optional), every key of the token's
    /// algorithm, at most `maxUnnamedCandidates`, tried in turn.
    public func keys(kid: String?, algorithm: JWTAlgorithmName) -> [JWTVerificationKey] {
        if let kid { return keys.first { $0.kid == kid }.map { [$0] } ?? [] }
        return Array(keys.filter { $0.algorithm == algorithm }.prefix(Self.maxUnnamedCandidates))
    }

    /// A token without a kid costs at most this many signature checks.
    public static let maxUnnamedCandidates = 4

    public var kids: [String] { keys.compactMap(\.kid) }

    /// Loads a JWKS document (`{"keys":[…]}`). Keys of other types or algorithms, and encryption keys, are skipped
    /// and reported in `skipped`; a document that is not a JWKS is an error.
    public static func parse(_ bytes: [UInt8]) async throws -> JWTKeySet {
        let document = try JSONValue.parse(bytes, limits: JSONLimits(maxBytes: 1 << 20, maxDepth: 16))
        guard let array = document["keys"]?.arrayValue else {
            throw JWKSError("the JWKS document has no \"keys\" array")
        }
        var set = JWTKeySet()
        for (index, jwk) in array.enumerated() {
            let kid = jwk["kid"]?.stringValue
            let label = kid.map { "kid \($0)" } ?? "key \(index)"
            do {
                if let key = try await loadKey(jwk, kid: kid) {
                    if let kid, set.keys.contains(where: { $0.kid == kid }) {
                        set.skipped.append("\(label): a second key with the same kid")
                    } else {
                        set.keys.append(key)
                    }
                } else {
                    set.skipped.append("\(label): not a signing key")
                }
            } catch {
                set.skipped.append("\(label): \(error)")
            }
        }
        return set
    }

    private static func loadKey(_ jwk: JSONValue, kid: String?) async throws -> JWTVerificationKey? {
        guard jwk.objectValue != nil else { throw JWKSError("not a JSON object") }
        if let use = jwk["use"]?.stringValue, use != "sig" { return nil }
        let declared = jwk["alg"]?.stringValue
        let collection = JWTKeyCollection()
        let algorithm: JWTAlgorithmName
        switch jwk["kty"]?.stringValue {
        case "RSA":
            algorithm = try expect(declared, .rs256)
            guard let n = jwk["n"]?.stringValue, let e = jwk["e"]?.stringValue else {
                throw JWKSError("an RSA key needs n and e")
            }
            await collection.add(rsa: try Insecure.RSA.PublicKey(modulus: n, exponent: e), digestAlgorithm: .sha256)
        case "EC":
            algorithm = try expect(declared, .es256)
            guard jwk["crv"]?.stringValue == "P-256" else { throw JWKSError("ES256 needs curve P-256") }
            guard let x = jwk["x"]?.stringValue, let y = jwk["y"]?.stringValue else {
                throw JWKSError("an EC key needs x and y")
            }
            await collection.add(ecdsa: try ES256PublicKey(parameters: (x: x, y: y)))
        case "oct":
            algorithm = try expect(declared, .hs256)
            guard let k = jwk["k"]?.stringValue, let secret = Base64URL.decode(k) else {
                throw JWKSError("an HMAC key needs k, base64url-encoded")
            }
            guard secret.count >= 32 else { throw JWKSError("an HS256 key needs at least 256 bits") }
            await collection.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        case let other:
            throw JWKSError("key type \(other ?? "(none)") is not supported")
        }
        let verifier = try await collection.getKey()
        return JWTVerificationKey(kid: kid, algorithm: algorithm, verifier: verifier)
    }

    private static func expect(_ declared: String?, _ algorithm: JWTAlgorithmName) throws -> JWTAlgorithmName {
        guard let declared, declared != algorithm.rawValue else { return algorithm }
        throw JWKSError("algorithm \(declared) is not accepted for this key (only \(algorithm.rawValue))")
    }
}

public struct JWKSError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
