// Applies `migrations/NNNN_name.sql` in order, forward only, once each (DESIGN.md section 5). Concurrent gateways
// are serialized by a row lock (`SELECT … FOR UPDATE` on one row), since CockroachDB has no advisory locks.
import Logging
import StatefnPostgres

#if canImport(Glibc)
    import Glibc
#endif

public struct Migration: Sendable, Equatable {
    public var version: String
    public var name: String
    public var sql: String
}

public enum MigratorError: Error, CustomStringConvertible {
    case directoryMissing(String)
    case badFileName(String)
    case unreadable(String)

    public var description: String {
        switch self {
        case .directoryMissing(let path): "migrations directory not found: \(path)"
        case .badFileName(let name): "migration file name must look like NNNN_name.sql: \(name)"
        case .unreadable(let path): "cannot read migration \(path)"
        }
    }
}

public struct Migrator: Sendable {
    public var migrations: [Migration]
    public let directory: String

    public init(directory: String) throws {
        self.directory = directory
        guard let dir = opendir(directory) else { throw MigratorError.directoryMissing(directory) }
        defer { closedir(dir) }
        var found: [Migration] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard name.hasSuffix(".sql") else { continue }
            let digits = name.prefix(while: \.isNumber)
            guard digits.count == 4, name.dropFirst(4).first == "_" else { throw MigratorError.badFileName(name) }
            let path = directory + "/" + name
            guard let sql = readFile(path) else { throw MigratorError.unreadable(path) }
            found.append(Migration(version: String(digits), name: String(name.dropLast(4)), sql: sql))
        }
        migrations = found.sorted { $0.version < $1.version }
    }

    /// Applies every migration not yet recorded in `schema_migrations`; returns the names applied.
    @discardableResult
    public func apply(on pool: PostgresPool, logger: Logger) async throws -> [String] {
        try await bootstrap(pool)
        var applied: [String] = []
        for migration in migrations {
            let didApply = try await pool.withConnection { db -> Bool in
                _ = try db.execute("BEGIN")
                _ = try db.execute("SELECT id FROM schema_migrations_lock WHERE id = 1 FOR UPDATE")
                let done = try db.execute("SELECT 1 FROM schema_migrations WHERE version = $1", [migration.version])
                guard done.rows.isEmpty else {
                    _ = try db.execute("ROLLBACK")
                    return false
                }
                try db.executeScript(migration.sql)
                _ = try db.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", [migration.version, migration.name])
                _ = try db.execute("COMMIT")
                return true
            }
            if didApply {
                logger.info("migration applied", metadata: ["migration": "\(migration.name)"])
                applied.append(migration.name)
            }
        }
        return applied
    }

    /// Each migration on disk with when it was applied (nil: pending), and versions the database has that are not
    /// on disk (a newer statefn migrated it). Changes nothing, not even the bookkeeping tables.
    public func status(on pool: PostgresPool) async throws -> (migrations: [(Migration, appliedAt: String?)], unknown: [String]) {
        var applied: [String: String] = [:]
        do {
            let rows = try await pool.read(
                "SELECT version, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                    + " FROM schema_migrations"
            ).rows
            for row in rows { if let version = row[0] { applied[version] = row[1] ?? "" } }
        } catch let error as PostgresError where error.sqlState == "42P01" {
            // Never migrated: everything is pending.
        }
        let known = Set(migrations.map(\.version))
        return (migrations.map { ($0, applied[$0.version]) }, applied.keys.filter { !known.contains($0) }.sorted())
    }

    /// True when every migration on disk is recorded as applied.
    public func isUpToDate(on pool: PostgresPool) async throws -> Bool {
        try await status(on: pool).migrations.allSatisfy { $0.appliedAt != nil }
    }

    private func bootstrap(_ pool: PostgresPool) async throws {
        let statements = [
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version text NOT NULL PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
            """,
            "CREATE TABLE IF NOT EXISTS schema_migrations_lock (id bigint NOT NULL PRIMARY KEY)",
            "INSERT INTO schema_migrations_lock (id) VALUES (1) ON CONFLICT (id) DO NOTHING",
        ]
        for statement in statements {
            // Gateways creating the same table at once can collide in the catalog (23505, 42P07, 42710);
            // a second try sees the table.
            for attempt in 1...3 {
                do {
                    _ = try await pool.execute(statement)
                    break
                } catch let error as PostgresError
                    where attempt < 3 && ["23505", "42P07", "42710"].contains(error.sqlState ?? "")
                {
                    try await Task.sleep(for: .milliseconds(10 * attempt))
                }
            }
        }
    }
}

/// A whole text file, or nil if it cannot be read; fopen(3), fread(3).
public func readFile(_ path: String) -> String? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n > 0 { bytes.append(contentsOf: buffer[0..<n]) }
        if n < buffer.count { break }
    }
    return String(decoding: bytes, as: UTF8.self)
}
