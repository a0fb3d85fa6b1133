// Turns `sfn_<id>_<secret>` into a principal. Lookups are cached for at most `cacheSeconds` (30 s), so the database
// is not asked on every call and a revoked key stops working within that window.
import StatefnPostgres
import Synchronization

public final class APIKeyVerifier: Sendable {
    private struct Entry {
        /// nil: no key with this id (cached too; ids are random, so nobody uses one before it exists).
        var record: APIKeyRecord?
        /// Built once per lookup, so the request path does not parse scopes again.
        var principal: Principal?
        var fetchedAt: Double
    }

    private let store: APIKeyStore
    private let cacheSeconds: Double
    private let clock: AuthClock
    private let entries = Mutex<[String: Entry]>([:])
    private let maxEntries = 100_000

    public init(store: APIKeyStore, cacheSeconds: Double = 30, clock: @escaping AuthClock = SystemAuthClock.now) {
        self.store = store
        self.cacheSeconds = cacheSeconds
        self.clock = clock
    }

    /// The key's principal: its name as subject, its scopes, its id. Throws `AuthError` for a bad key, and the
    /// database's error when the lookup fails (the caller answers 503). With `lookupRefused`, a key that is not in
    /// the cache is refused with that error instead of being looked up (its caller has failed too often).
    public func verify(_ token: String, lookupRefused: AuthError? = nil) async throws -> Principal {
        guard let key = APIKey(parsing: token) else {
            throw AuthError(.malformed, "the API key is not of the form sfn_<id>_<secret>")
        }
        let now = clock()
        let cached = entries.withLock { $0[key.id] }
        let entry: Entry
        if let cached, now - cached.fetchedAt < cacheSeconds, now >= cached.fetchedAt {
            entry = cached
        } else {
            if let lookupRefused { throw lookupRefused }
            let record = try await store.lookup(id: key.id)
            entry = Entry(
                record: record, principal: record.map { Principal(subject: $0.name, scopes: $0.scopes, keyID: $0.id) },
                fetchedAt: now)
            entries.withLock { entries in
                if entries.count >= maxEntries { entries.removeAll(keepingCapacity: true) }
                entries[key.id] = entry
            }
        }
        // A wrong secret reads the same as an unknown id, so the answer does not tell which ids exist.
        guard let record = entry.record, let principal = entry.principal, APIKey.constantTimeEqual(key.secretHash, record.secretHash) else {
            throw AuthError(.unknownKey, "unknown API key")
        }
        guard !record.isRevoked else { throw AuthError(.revoked, "the API key was revoked") }
        if let expires = record.expiresAtEpoch, expires <= now {
            throw AuthError(.expired, "the API key has expired")
        }
        return principal
    }
}
