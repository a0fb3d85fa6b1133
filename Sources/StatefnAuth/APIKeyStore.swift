// API keys in the `api_keys` table: create, list, revoke, and the lookup the verifier caches.
import StatefnJSON
import StatefnPostgres

/// One stored key, without its secret (the hash cannot give it back).
public struct APIKeyRecord: Sendable, Equatable {
    public var id: String
    public var name: String
    public var scopes: [String]
    public var secretHash: [UInt8]
    /// As PostgreSQL prints timestamptz, for `keys list`.
    public var createdAt: String
    public var expiresAt: String?
    public var revokedAt: String?
    /// Seconds since 1970, for checks.
    public var expiresAtEpoch: Double?

    public var isRevoked: Bool { revokedAt != nil }
}

public final class APIKeyStore: Sendable {
    private let pool: PostgresPool

    public init(pool: PostgresPool) { self.pool = pool }

    /// Stores a new key and returns it; its token is shown once and never again.
    public func create(name: String, scopes: [String], expiresInSeconds: Int64?) async throws -> (APIKey, APIKeyRecord)
    {
        let key = APIKey.generate()
        let scopesJSON = JSONValue.array(scopes.map(JSONValue.string)).encodedString()
        _ = try await pool.execute(
            """
            INSERT INTO api_keys (id, secret_hash, name, scopes, expires_at)
            VALUES ($1, decode($2, 'hex'), $3, $4::jsonb,
                    CASE WHEN $5::bigint IS NULL THEN NULL ELSE now() + $5::bigint * INTERVAL '1 second' END)
            """,
            [key.id, APIKey.hex(key.secretHash), name, scopesJSON, expiresInSeconds.map { String($0) }])
        guard let record = try await lookup(id: key.id) else {
            throw PostgresError(code: .queryFailed, detail: "the new API key was not found after it was written")
        }
        return (key, record)
    }

    public func list() async throws -> [APIKeyRecord] {
        try await pool.read("\(Self.select) ORDER BY created_at, id").rows.compactMap(Self.record)
    }

    public func lookup(id: String) async throws -> APIKeyRecord? {
        try await pool.read("\(Self.select) WHERE id = $1", [id]).rows.first.flatMap(Self.record)
    }

    /// Marks the key revoked; false if there is no such key or it was revoked before.
    public func revoke(id: String) async throws -> Bool {
        try await pool.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", [id]
        ).affectedRows == 1
    }

    private static let select = """
        SELECT id, name, scopes::text, encode(secret_hash, 'hex'), created_at::text, expires_at::text,
               revoked_at::text, extract(epoch FROM expires_at)::float8::text
        FROM api_keys
        """

    private static func record(_ row: [String?]) -> APIKeyRecord? {
        guard row.count == 8, let id = row[0], let name = row[1], let scopesText = row[2], let hashHex = row[3],
            let hash = APIKey.unhex(hashHex), let createdAt = row[4]
        else { return nil }
        return APIKeyRecord(
            id: id, name: name, scopes: scopes(scopesText), secretHash: hash, createdAt: createdAt,
            expiresAt: row[5], revokedAt: row[6], expiresAtEpoch: row[7].flatMap { Double($0) })
    }

    private static func scopes(_ text: String) -> [String] {
        let value = try? JSONValue.parse(text, limits: JSONLimits(maxBytes: .max, maxDepth: 4))
        return value?.arrayValue?.compactMap(\.stringValue) ?? []
    }
}
