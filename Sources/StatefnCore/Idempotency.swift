// Idempotency-Key (DESIGN.md section 4; the IETF httpapi draft): the header's grammar, the request fingerprint, the
// stored answer, and the registry that makes a repeat wait for a first call still running in this gateway.
import Crypto
import StatefnAuth
import StatefnHTTP
import Synchronization

/// A command's claim on an idempotency record: who asked, for which entity, under which key, with which request.
struct IdempotencyClaim: Sendable {
    /// The caller's subject ("" for an anonymous call): one caller's key never replays another caller's answer.
    var caller: String
    var key: EntityKey
    var token: String
    /// SHA-256 (hex) of what makes two requests the same request: method, command, If-Match and body bytes.
    var fingerprint: String

    /// Parses `Idempotency-Key`, nil when the request has none. Accepts a structured-field string (`"k"`, RFC 8941,
    /// as the draft says) and, since clients send them, a bare token of visible ASCII. 1 to 255 bytes.
    static func parse(header: String?) throws(GatewayError) -> String? {
        guard let raw = header?.trimmingSpaces else { return nil }
        var token = ""
        if raw.hasPrefix("\"") {
            var bytes = Array(raw.utf8).dropFirst()
            var closed = false
            var out: [UInt8] = []
            while let byte = bytes.popFirst() {
                if byte == UInt8(ascii: "\\") {
                    guard let next = bytes.popFirst(), next == UInt8(ascii: "\\") || next == UInt8(ascii: "\"") else {
                        throw invalid("a backslash in a quoted key may only escape \\ or \"")
                    }
                    out.append(next)
                } else if byte == UInt8(ascii: "\"") {
                    closed = true
                    break
                } else {
                    guard (0x20...0x7E).contains(byte) else { throw invalid("a key is printable ASCII") }
                    out.append(byte)
                }
            }
            guard closed, bytes.isEmpty else { throw invalid("a quoted key must end with its closing quote") }
            token = String(decoding: out, as: UTF8.self)
        } else {
            guard raw.utf8.allSatisfy({ (0x21...0x7E).contains($0) && $0 != UInt8(ascii: "\"") }) else {
                throw invalid("a key is visible ASCII, or a quoted string: Idempotency-Key: \"…\"")
            }
            token = raw
        }
        guard !token.isEmpty else { throw invalid("the key is empty") }
        guard token.utf8.count <= 255 else {
            throw invalid("the key is \(token.utf8.count) bytes; at most 255 are allowed")
        }
        return token
    }

    static func fingerprint(command: String, ifMatch: String?, body: [UInt8]) -> String {
        var hasher = SHA256()
        hasher.update(data: Array("POST\u{0}\(command)\u{0}\(ifMatch ?? "")\u{0}".utf8))
        hasher.update(data: body)
        return APIKey.hex(Array(hasher.finalize()))
    }

    private static func invalid(_ why: String) -> GatewayError {
        GatewayError(400, "invalid Idempotency-Key: \(why)")
    }

    /// The registry's key: every part by its bytes, separated by a byte UTF-8 never uses.
    var registryKey: [UInt8] {
        var bytes: [UInt8] = []
        for part in [caller, key.function, key.entity, token] {
            bytes.append(contentsOf: part.utf8)
            bytes.append(0xFF)
        }
        return bytes
    }
}

/// An answer as stored with its commit, and replayed to a repeat.
struct StoredAnswer: Sendable, Equatable {
    var fingerprint: String
    var status: Int
    var body: String
    var etag: String?

    func response() -> HTTPResponse {
        var headers: [(name: String, value: String)] = [
            (name: "Content-Type", value: status >= 400 ? "application/problem+json" : "application/json"),
            (name: "Idempotent-Replayed", value: "true"),
        ]
        if let etag { headers.append((name: "ETag", value: etag)) }
        return HTTPResponse(status: status, headers: headers, body: Array(body.utf8))
    }
}

/// The keys whose first call is running in this gateway. A repeat waits for the first call to finish (it then finds
/// the stored answer), up to a bound; after that it gets 409 with `Retry-After`. The entity's mailbox would make it
/// wait anyway; this only bounds the wait. A repeat while the first is still running is rare, so it polls.
final class IdempotencyInFlight: Sendable {
    private let running = Mutex<Set<[UInt8]>>([])

    /// Runs `body` as the only call in this gateway under `claim`'s key. Throws 409 when an earlier call under the
    /// same key is still running after `wait`.
    func run<T: Sendable>(_ claim: IdempotencyClaim, wait: Duration, _ body: () async throws -> T) async throws -> T {
        let key = claim.registryKey
        let deadline = ContinuousClock.now.advanced(by: wait)
        while !running.withLock({ $0.insert(key).inserted }) {
            guard ContinuousClock.now < deadline else {
                throw GatewayError(
                    409, "a request with this Idempotency-Key is still running; try again later",
                    headers: [(name: "Retry-After", value: "1")])
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        defer { _ = running.withLock { $0.remove(key) } }
        return try await body()
    }
}
