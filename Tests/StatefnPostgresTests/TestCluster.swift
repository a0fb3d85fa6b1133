// One real PostgreSQL cluster for the whole test process, started on first use in a fresh temporary directory
// and stopped (and deleted) when the process exits, plus helpers to run blocking work off the cooperative pool.
import Dispatch
import Foundation
import Logging
import StatefnPostgres

enum TestCluster {
    /// The shared cluster's connection string. Starting it blocks, so it happens on a thread of its own.
    static func conninfo() async throws -> String {
        try await onDedicatedThread { try shared.get().conninfo }
    }

    static func config() async throws -> PostgresConfig {
        try PostgresConfig(try await conninfo())
    }

    static let logger: Logger = {
        var logger = Logger(label: "statefn.postgres.tests")
        logger.logLevel = .warning
        return logger
    }()

    /// A new empty directory that the server's unprivileged account can reach (mkdtemp makes it 0700).
    static func makeTemporaryDirectory() -> String {
        var template = Array("/tmp/statefn-pgtest-XXXXXX".utf8CString)
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
        let cluster = EmbeddedPostgres(directory: directory + "/data", logger: logger)
        do throws(PostgresError) {
            let conninfo = try cluster.start()
            atexit { TestCluster.stopShared() }
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

/// Runs blocking work (libpq, pg_ctl) on a thread of its own: never on Swift's cooperative pool, and not on GCD's
/// global queues either, which on Linux run only about one thread per core.
func onDedicatedThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// Expects `body` to throw a PostgresError and returns it.
func expectPostgresError(_ body: () async throws -> Void) async -> PostgresError? {
    do {
        try await body()
        return nil
    } catch let error as PostgresError {
        return error
    } catch {
        return nil
    }
}
