// A real PostgreSQL for tests: one throwaway cluster per test process, started on first use with
// `EmbeddedPostgres` in a temporary directory and stopped when the process exits. Each test asks for its own
// database, so tests running in parallel never see each other's rows.
import Foundation
import Logging
import StatefnPostgres
import Synchronization

public enum TestDatabase {
    private static let cluster = Mutex<(embedded: EmbeddedPostgres, conninfo: String, admin: PostgresPool)?>(nil)

    /// A libpq connection string for a new, empty database in the shared cluster.
    public static func createDatabase() async throws -> String {
        let (conninfo, admin) = try startCluster()
        let name = "t_" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        _ = try await admin.execute("CREATE DATABASE \(name)")
        return conninfo + " dbname=\(name)"
    }

    private static func startCluster() throws -> (String, PostgresPool) {
        try cluster.withLock { cluster in
            if let cluster { return (cluster.conninfo, cluster.admin) }
            let directory = NSTemporaryDirectory() + "statefn-test-" + String(UInt32.random(in: 0...UInt32.max), radix: 36)
            let logger = Logger(label: "test-postgres")
            let embedded = EmbeddedPostgres(directory: directory + "/pg", logger: logger)
            let conninfo = try embedded.start()
            let admin = PostgresPool(config: try PostgresConfig(conninfo), size: 2, logger: logger)
            cluster = (embedded, conninfo, admin)
            atexit {
                TestDatabase.stopCluster()
            }
            return (conninfo, admin)
        }
    }

    private static func stopCluster() {
        cluster.withLock { cluster in
            cluster?.admin.close()
            cluster?.embedded.stop()
            cluster = nil
        }
    }
}
