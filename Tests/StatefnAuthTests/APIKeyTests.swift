// API keys: the format, the hash, and the store and verifier against a real PostgreSQL, with a fake clock for the
// 30-second cache window.
import Logging
import StatefnAuth
import StatefnCore
import StatefnPostgres
import StatefnTestSupport
import Synchronization
import Testing

@Suite("API keys")
struct APIKeyTests {
    @Test("keys carry 256 random bits, parse back, and only their hash is compared")
    func format() {
        let key = APIKey.generate()
        #expect(key.secret.utf8.count == 64)
        #expect(key.token.hasPrefix("sfn_" + key.id + "_"))
        #expect(APIKey(parsing: key.token) == key)
        #expect(APIKey.generate() != key)
        #expect(key.secretHash.count == 32)
        #expect(APIKey.constantTimeEqual(key.secretHash, APIKey.hash(key.secret)))
        #expect(!APIKey.constantTimeEqual(key.secretHash, APIKey.hash(key.secret + "0")))
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
        #expect(record.expiresAt != nil)
        let rows = try await pool.execute("SELECT encode(secret_hash, 'hex') FROM api_keys").rows
        #expect(rows.count == 1)
        #expect(rows[0][0] != key.secret, "the secret itself is never stored")
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
