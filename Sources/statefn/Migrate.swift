// `statefn migrate`: apply pending migrations and exit; `--status` only reports.
import ArgumentParser
import Logging
import StatefnCore
import StatefnPostgres

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply pending database migrations and exit, or with --status, list them.",
        discussion: """
            Uses DATABASE_URL, or the embedded cluster under --data-dir when it is not set. `statefn serve` applies \
            pending migrations itself; run this first to migrate before a rollout.

            Examples:
              DATABASE_URL=postgresql://root@db:26257/statefn statefn migrate
              statefn migrate --status        # exit status 1 while any is pending
            """)

    @Flag(help: "List each migration as applied (with when) or pending, change nothing; exit 1 if any is pending.")
    var status = false

    @OptionGroup var database: DatabaseOptions

    func run() async throws {
        let logger = bootstrapLogging(level: .warning)
        try await reportingFailure(logger) {
            let database = try database.settings()
            let migrator = try database.migrator()
            let (config, embedded) = try database.open(logger: logger, leaveRunning: true)
            defer { embedded?.stop() }
            let pool = PostgresPool(config: config, size: 1, logger: logger)
            defer { pool.close() }
            guard status else {
                let applied = try await migrator.apply(on: pool, logger: logger)
                print(applied.isEmpty ? "migrations: up to date" : "migrations applied: \(applied.joined(separator: ", "))")
                return
            }
            let (migrations, unknown) = try await migrator.status(on: pool)
            printTable(
                header: ["VERSION", "NAME", "APPLIED"],
                rows: migrations.map { [$0.0.version, $0.0.name, $0.appliedAt ?? "pending"] })
            for version in unknown {
                print("\(version)  (applied, but not in \(migrator.directory): from a newer statefn?)")
            }
            let pending = migrations.filter { $0.appliedAt == nil }.count
            print(pending == 0 ? "up to date" : "\(pending) pending")
            if pending > 0 { throw ExitCode.failure }
        }
    }
}
