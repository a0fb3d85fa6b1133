// `statefn keys create|list|revoke`: API keys in the database that DATABASE_URL (or the embedded cluster) names.
// The secret is printed once, by `create`, and never stored: only its SHA-256 is.
import ArgumentParser
import Logging
import StatefnAuth
import StatefnPostgres

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage API keys.",
        discussion: """
            Uses DATABASE_URL, or the embedded cluster under --data-dir (shared with a running gateway).

            Example: statefn keys create --name alice --scope 'invoke:cart/{sub}' --expires 30d
            """,
        subcommands: [Create.self, List.self, Revoke.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create an API key and print it (this is the only time it is shown).",
            discussion: """
                Scopes are <action>:<function>[/<entity>]: action invoke, read or admin; function a name or *; entity \
                an id, a prefix ending in *, or {sub} (the key's name). Example: statefn keys create --name alice \
                --scope 'invoke:cart/{sub}' --expires 30d
                """)

        @Option(help: ArgumentHelp("The key's name; it is also the caller's subject ({sub}).", valueName: "name"))
        var name: String

        @Option(
            name: .customLong("scope"), help: ArgumentHelp("A scope to grant; repeat for more.", valueName: "scope"))
        var scopes: [String] = []

        @Option(help: ArgumentHelp("Lifetime, like 3600s, 90m, 12h or 30d; default: no expiry.", valueName: "duration"))
        var expires: String?

        @OptionGroup var database: DatabaseOptions

        func validate() throws {
            guard !name.isEmpty, name.utf8.count <= 200,
                !name.unicodeScalars.contains(where: { $0.properties.generalCategory == .control })
            else { throw ValidationError("--name must be 1 to 200 bytes with no control characters") }
            guard !scopes.isEmpty else { throw ValidationError("give at least one --scope, like invoke:counter") }
            for scope in scopes where Scope(scope) == nil {
                throw ValidationError(
                    "invalid scope \(scope): expected <invoke|read|admin>:<function|*>[/<entity>|/<prefix>*|/{sub}]")
            }
            if let expires, Self.seconds(expires) == nil {
                throw ValidationError("--expires must look like 3600s, 90m, 12h or 30d, got \(expires)")
            }
        }

        func run() async throws {
            let logger = bootstrapLogging(level: .warning)
            try await reportingFailure(logger) {
                try await withKeyStore(database, logger) { store in
                    let (key, record) = try await store.create(
                        name: name, scopes: scopes, expiresInSeconds: expires.flatMap(Self.seconds))
                    print(key.token)
                    printError(
                        "created API key \(record.id) (\(record.name)), scopes \(record.scopes.joined(separator: " "))"
                            + (record.expiresAt.map { ", expires \($0)" } ?? "") + "; it is not shown again")
                }
            }
        }

        static func seconds(_ text: String) -> Int64? {
            guard let unit = text.last, let count = Int64(text.dropLast()), count > 0 else { return nil }
            let unitSeconds: Int64
            switch unit {
            case "s": unitSeconds = 1
            case "m": unitSeconds = 60
            case "h": unitSeconds = 3600
            case "d": unitSeconds = 86400
            default: return nil
            }
            // At most about 100 years, so the database's interval arithmetic cannot overflow.
            let (seconds, overflow) = count.multipliedReportingOverflow(by: unitSeconds)
            return overflow || seconds > 3_200_000_000 ? nil : seconds
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List API keys (never their secrets).", discussion: "Example: statefn keys list")
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let logger = bootstrapLogging(level: .warning)
            try await reportingFailure(logger) {
                try await withKeyStore(database, logger) { store in
                    let rows = try await store.list().map {
                        [
                            $0.id, $0.name, $0.scopes.joined(separator: " "), $0.createdAt, $0.expiresAt ?? "-",
                            $0.revokedAt ?? "-",
                        ]
                    }
                    printTable(header: ["ID", "NAME", "SCOPES", "CREATED", "EXPIRES", "REVOKED"], rows: rows)
                }
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke an API key; gateways stop accepting it within 30 seconds.",
            discussion: "Example: statefn keys revoke 3f9a1c0d2b4e")
        @Argument(help: "The key's id (the part after sfn_ and before the next _).") var id: String
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let logger = bootstrapLogging(level: .warning)
            try await reportingFailure(logger) {
                try await withKeyStore(database, logger) { store in
                    guard try await store.revoke(id: id) else {
                        printError("no API key \(id), or it was revoked already")
                        throw ExitCode.failure
                    }
                    print("revoked \(id)")
                }
            }
        }
    }
}

/// Opens the database (leaving a gateway's embedded cluster running), applies migrations, and runs `body`.
private func withKeyStore(
    _ database: DatabaseOptions, _ logger: Logger, _ body: (APIKeyStore) async throws -> Void
) async throws {
    let database = try database.settings()
    let migrator = try database.migrator()
    let (config, embedded) = try database.open(logger: logger, leaveRunning: true)
    defer { embedded?.stop() }
    let pool = PostgresPool(config: config, size: 1, logger: logger)
    defer { pool.close() }
    try await migrator.apply(on: pool, logger: logger)
    try await body(APIKeyStore(pool: pool))
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
func printTable(header: [String], rows: [[String]]) {
    let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
    for row in [header] + rows {
        let line = zip(row, widths).map { $0.padding(toLength: $1) }.joined(separator: "  ")
        print(String(line.reversed().drop(while: { $0 == " " }).reversed()))
    }
}

extension String {
    fileprivate func padding(toLength length: Int) -> String {
        count >= length ? self : self + String(repeating: " ", count: length - count)
    }
}
