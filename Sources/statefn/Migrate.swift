// `statefn migrate`: apply pending migrations and exit.
import ArgumentParser
import Logging
import StatefnPostgres

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply pending database migrations and exit.",
        discussion: "Uses DATABASE_URL, or the embedded cluster under --data-dir when it is not set.")

    @OptionGroup var database: DatabaseOptions

    func run() async throws {
        let logger = bootstrapLogging(level: .info)
        try await reportingFailure(logger) {
            let migrator = try database.migrator()
            let (config, embedded) = try database.open(logger: logger)
            defer { embedded?.stop() }
            let pool = PostgresPool(config: config, size: 1, logger: logger)
            defer { pool.close() }
            let applied = try await migrator.apply(on: pool, logger: logger)
            print(applied.isEmpty ? "migrations: up to date" : "migrations applied: \(applied.joined(separator: ", "))")
        }
    }
}
