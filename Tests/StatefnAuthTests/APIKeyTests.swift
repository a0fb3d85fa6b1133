// API keys: the format, the hash, and the store and verifier against a real PostgreSQL, with a fake clock for the
// 30-second cache window. The hash is checked against SHA-256 computed here (swift-crypto, which _CryptoExtras
// re-exports) and by PostgreSQL itself, not against APIKey's own.
import Foundation
import Logging
import StatefnAuth
import StatefnCore
import StatefnPostgres
import StatefnTestSupport
import Synchronization
import Testing
import _CryptoExtras

/// Lower-case hex of `bytes`.
private func hex(_ bytes: some Sequence<UInt8>) -> String {
    bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}

/// SHA-256 of `text`'s UTF-8, in hex, by swift-crypto.
private func sha256(_ text: String) -> String { hex(Crypto.SHA256.hash(data: Array(text.utf8))) }

@Suite("API keys", .timeLimit(.minutes(3)))
struct APIKeyTests {
    @Test("keys carry 256 random bits, parse back, and only their hash is compared")
    func format() {
        let key = APIKey.generate()
        #expect(key.secret.utf8.count == 64)
        #expect(key.token.hasPrefix("sfn_" + key.id + "_"))
        #expect(APIKey(parsing: key.token) == key)
        #expect(APIKey.generate() != key)
        #expect(key.secret.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) })
        // SHA-256 itself: the FIPS 180-2 test vector, by this test's own SHA-256, then the key's secret.
        #expect(sha256("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex(APIKey.hash("abc")) == sha256("abc"))
        #expect(hex(key.secretHash) == sha256(key.secret))
        #expect(APIKey.constantTimeEqual(key.secretHash, Array(Crypto.SHA256.hash(data: Array(key.secret.utf8)))))
        var flipped = key.secretHash
        flipped[31] ^= 1
        #expect(!APIKey.constantTimeEqual(key.secretHash, flipped), "a difference in the last byte counts")
        #expect(!APIKey.constantTimeEqual(key.secretHash, Array(key.secretHash.prefix(31))))
        for bad in ["", "sfn_", "sfn_abc", "sfn_abc_", "sfn_ABC_" + key.secret, "sfn_abc_xyz", "key_abc_" + key.secret]
        {
            #expect(APIKey(parsing: bad) == nil, "\(bad)")
        }
    }

    static func store() async throws -> (APIKeyStore, PostgresPool) {
        let conninfo = try await TestDatabase.createDatabase()
        let logger = Logger(label: "test-keys")
        let pool = PostgresPool(config: try PostgresConfig(conninfo), size: 2, logger: logger)
        try await Migrator(directory: GatewayProcess.repositoryRoot + "/migrations").apply(on: pool, logger: logger)
        return (APIKeyStore(pool: pool), pool)
    }

    @Test("create, list and revoke; the database keeps no secret")
    func store() async throws {
        let (store, pool) = try await Self.store()
        defer { pool.close() }
        let (key, record) = try await store.create(name: "alice", scopes: ["invoke:cart/{sub}"], expiresInSeconds: 3600)
        #expect(record.id == key.id)
        #expect(record.scopes == ["invoke:cart/{sub}"])
        let expiresAt = try #require(record.expiresAtEpoch)
        #expect(abs(expiresAt - (Date().timeIntervalSince1970 + 3600)) < 60, "expires in an hour")
        // The stored hash is SHA-256 of the secret, as computed here and by PostgreSQL's own sha256().
        let rows = try await pool.execute(
            """
            SELECT encode(secret_hash, 'hex'), encode(sha256(convert_to($2, 'UTF8')), 'hex')
            FROM api_keys WHERE id = $1
            """,
            [key.id, key.secret]
        ).rows
        #expect(rows.count == 1)
        #expect(rows.first?[0] == sha256(key.secret))
        #expect(rows.first?[1] == sha256(key.secret))
        #expect(record.secretHash == Array(Crypto.SHA256.hash(data: Array(key.secret.utf8))))
        let everything = try await pool.execute("SELECT row_to_json(api_keys)::text FROM api_keys").rows
        #expect(everything.count == 1)
        #expect(everything.allSatisfy { !($0[0] ?? "").contains(key.secret) }, "the secret itself is never stored")
        #expect(try await store.list().map(\.name) == ["alice"])
        #expect(try await store.revoke(id: key.id))
        #expect(try await !store.revoke(id: key.id), "revoking twice reports it")
        #expect(try await store.lookup(id: key.id)?.isRevoked == true)
    }

    @Test("a revoked key stops working within the 30-second cache window")
    func revocation() async throws {
        let (store, pool) = try await Self.store()
        defer { pool.close() }
        let now = Mutex(1000.0)
        let verifier = APIKeyVerifier(store: store, clock: { now.withLock { $0 } })
        let (key, _) = try await store.create(name: "alice", scopes: ["invoke:cart"], expiresInSeconds: nil)
        let principal = try await verifier.verify(key.token)
        #expect(principal == Principal(subject: "alice", scopes: ["invoke:cart"], keyID: key.id))
        _ = try await store.revoke(id: key.id)
        now.withLock { $0 += 10 }
        #expect(try await verifier.verify(key.token).subject == "alice", "still cached")
        now.withLock { $0 += 21 }
        await #expect(throws: AuthError(.revoked, "the API key was revoked")) { try await verifier.verify(key.token) }
    }

    @Test("wrong secrets, unknown ids and expired keys are refused")
    func refusals() async throws {
        let (store, pool) = try await Self.store()
        defer { pool.close() }
        let verifier = APIKeyVerifier(store: store)
        let (key, _) = try await store.create(name: "bob", scopes: ["read:*"], expiresInSeconds: 1)
        let wrong = APIKey(id: key.id, secret: String(repeating: "0", count: 64))
        await #expect(throws: AuthError(.unknownKey, "unknown API key")) { try await verifier.verify(wrong.token) }
        await #expect(throws: AuthError(.unknownKey, "unknown API key")) {
            try await verifier.verify(APIKey.generate().token)
        }
        await #expect(throws: AuthError(.malformed, "the API key is not of the form sfn_<id>_<secret>")) {
            try await verifier.verify("sfn_nope")
        }
        let later = APIKeyVerifier(store: store, clock: { SystemAuthClock.now() + 5 })
        await #expect(throws: AuthError(.expired, "the API key has expired")) { try await later.verify(key.token) }
    }
}
