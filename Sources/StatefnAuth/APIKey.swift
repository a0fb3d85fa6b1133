// API key format and hashing (DESIGN.md section 6): `sfn_<id>_<secret>`, a 256-bit random secret shown once, and
// only its SHA-256 kept. Pure: the store and the verifier build on it.
import Crypto
import StatefnText

public struct APIKey: Sendable, Equatable {
    /// Lower-case letters and digits, so the first `_` after the prefix ends it.
    public var id: String
    /// 64 hex digits: 256 random bits.
    public var secret: String

    public static let prefix = "sfn_"

    /// A fresh key from the system's cryptographic generator (getrandom on Linux).
    public static func generate() -> APIKey {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789".utf8)
        let id = String(
            decoding: (0..<12).map { _ in alphabet[Int(generator.next(upperBound: UInt32(alphabet.count)))] },
            as: UTF8.self)
        let secret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        return APIKey(id: id, secret: hex(secret))
    }

    public init(id: String, secret: String) {
        self.id = id
        self.secret = secret
    }

    /// Parses `sfn_<id>_<secret>`; nil for anything else.
    public init?(parsing token: some StringProtocol) {
        guard token.hasPrefix(Self.prefix) else { return nil }
        let rest = token.dropFirst(Self.prefix.count)
        guard let underscore = rest.firstIndex(of: "_") else { return nil }
        let id = rest[..<underscore]
        let secret = rest[rest.index(after: underscore)...]
        guard (1...32).contains(id.utf8.count), id.utf8.allSatisfy(Self.isIDByte),
            (32...128).contains(secret.utf8.count), secret.utf8.allSatisfy(Self.isHexByte)
        else { return nil }
        self.id = String(id)
        self.secret = String(secret)
    }

    /// What the client sends as `Authorization: Bearer …`.
    public var token: String { Self.prefix + id + "_" + secret }

    /// SHA-256 of the secret: all the database keeps.
    public var secretHash: [UInt8] { Self.hash(secret) }

    public static func hash(_ secret: String) -> [UInt8] { Array(SHA256.hash(data: Array(secret.utf8))) }

    /// Equal-length comparison whose time does not depend on where the bytes differ.
    public static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }

    /// Lowercase hex, two digits a byte (also the idempotency fingerprint's spelling).
    public static func hex(_ bytes: [UInt8]) -> String { Hex.encode(bytes) }

    static func unhex(_ text: some StringProtocol) -> [UInt8]? { Hex.decode(text) }

    private static func isIDByte(_ byte: UInt8) -> Bool { (0x61...0x7A).contains(byte) || (0x30...0x39).contains(byte) }
    private static func isHexByte(_ byte: UInt8) -> Bool { Hex.value(of: byte) != nil }
}
