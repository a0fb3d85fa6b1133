// Settings come from flags, else STATEFN_* variables (plus DATABASE_URL), Kubernetes style; StatefnCore's
// SettingsReader turns them into typed values and refuses what does not parse.
import ArgumentParser
import Foundation
import StatefnCore

/// The flags given on the command line (nil: not given) with this process's environment.
func configurationSource(_ flags: [String: String?]) -> ConfigurationSource {
    ConfigurationSource(flags: flags.compactMapValues { $0 }, environment: ProcessInfo.processInfo.environment)
}

/// Runs `body`, turning a refused setting into the command line's usage error (exit 64, with the message).
func configuring<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ConfigurationError {
        throw ValidationError(error.description)
    }
}
