// The `statefn` command line: serve, migrate, keys, invoke, functions. Configuration comes from flags and from
// STATEFN_* environment variables (plus DATABASE_URL), Kubernetes style; a flag wins over its variable.
import ArgumentParser

@main
struct Statefn: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "statefn",
        abstract: "A stateful serverless gateway: REST calls in, entity state in PostgreSQL, functions as processes.",
        discussion: """
            Examples:
              statefn serve --dev-key                       # the gateway, embedded PostgreSQL, ./functions
              statefn invoke counter alice increment '{"by":1}'
              statefn functions
              statefn keys create --name alice --scope 'invoke:cart/{sub}'
              statefn migrate --status
            """,
        subcommands: [Serve.self, Migrate.self, Keys.self, Invoke.self, Functions.self],
        defaultSubcommand: nil)
}
