// The `statefn` command line: serve, migrate, keys. Configuration comes from flags and from STATEFN_* environment
// variables (plus DATABASE_URL), Kubernetes style; a flag wins over its variable.
import ArgumentParser

@main
struct Statefn: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "statefn",
        abstract: "A stateful serverless gateway: REST calls in, entity state in PostgreSQL, functions as processes.",
        subcommands: [Serve.self, Migrate.self, Keys.self],
        defaultSubcommand: nil)
}
