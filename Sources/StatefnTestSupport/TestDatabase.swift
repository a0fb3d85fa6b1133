// A real PostgreSQL for tests: one throwaway cluster per test process, started on first use with
// `EmbeddedPostgres` in a fresh temporary directory, and stopped and deleted when the process exits. Each test
// asks for its own database, so tests running in parallel never see each other's rows.
import Foundation
import Logging
import StatefnPostgres

public enum TestDatabase {
    public static let logger: Logger = {
        var logger = Logger(label: "statefn.tests")
        logger.logLevel = .warning
        return logger
    }()

    /// The shared cluster's connection string (its `postgres` database). Starting it blocks, so it happens on a
    /// thread of its own.
    public static func conninfo() async throws -> String {
        try await onThread { try shared.get().conninfo }
    }

    /// A libpq connection string for a new, empty database in the shared cluster.
    public static func createDatabase() async throws -> String {
        let base = try await conninfo()
        let name = "t_" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let admin = PostgresPool(config: try PostgresConfig(base), size: 1, logger: logger)
        defer { admin.close() }
        _ = try await admin.execute("CREATE DATABASE \(name)")
        return base + " dbname=\(name)"
    }

    /// A new empty directory that PostgreSQL's unprivileged account can reach (mkdtemp makes it 0700).
    public static func makeTemporaryDirectory() -> String {
        var template = Array("/tmp/statefn-test-XXXXXX".utf8CString)
        let path = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        chmod(path, 0o755)
        return path
    }

    private struct Running: Sendable {
        var cluster: EmbeddedPostgres
        var directory: String
        var conninfo: String
    }

    private static let shared: Result<Running, PostgresError> = {
        let directory = makeTemporaryDirectory()
        let cluster = EmbeddedPostgres(directory: directory + "/data", logger: logger, flushesToDisk: false)
        do throws(PostgresError) {
            let conninfo = try cluster.start()
            atexit { TestDatabase.stopShared() }
            return .success(Running(cluster: cluster, directory: directory, conninfo: conninfo))
        } catch {
            cluster.stop()
            return .failure(error)
        }
    }()

    private static func stopShared() {
        guard case .success(let running) = shared else { return }
        running.cluster.stop()
        try? FileManager.default.removeItem(atPath: running.directory)
    }
}
