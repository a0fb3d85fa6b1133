// A cluster of its own: started, found still running, stopped, and started again with its data intact.
import Foundation
import Testing

import StatefnPostgres
import StatefnTestSupport

@Suite(.timeLimit(.minutes(3))) struct EmbeddedPostgresTests {
    @Test func restartsOnAnExistingDirectoryAndKeepsTheData() async throws {
        let root = TestDatabase.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let directory = root + "/cluster/pg"
        let cluster = EmbeddedPostgres(directory: directory, logger: TestDatabase.logger)
        defer { cluster.stop() }

        let conninfo = try await onThread { try cluster.start() }
        #expect(FileManager.default.fileExists(atPath: directory + "/PG_VERSION"))
        #expect(FileManager.default.fileExists(atPath: root + "/cluster/postgres.log"))
        let pool = PostgresPool(config: try PostgresConfig(conninfo), size: 2, logger: TestDatabase.logger)
        _ = try await pool.execute("CREATE TABLE kept (id text PRIMARY KEY)")
        _ = try await pool.execute("INSERT INTO kept VALUES ($1)", ["survives"])
        // Durability and isolation settings this module promises.
        #expect(try await pool.execute("SHOW fsync").rows == [["on"]])
        #expect(try await pool.execute("SHOW listen_addresses").rows == [[""]])
        #expect(try await pool.execute("SHOW max_connections").rows == [["200"]])
        pool.close()

        // A server left running (say, by a crashed statefn) is reused, not an error.
        let again = EmbeddedPostgres(directory: directory, logger: TestDatabase.logger)
        #expect(try await onThread { try again.start() } == conninfo)

        try await onThread { again.stop() }
        let restarted = try await onThread { try cluster.start() }
        let reopened = PostgresPool(config: try PostgresConfig(restarted), size: 1, logger: TestDatabase.logger)
        defer { reopened.close() }
        #expect(try await reopened.execute("SELECT id FROM kept").rows == [["survives"]])
    }

    @Test func aLongDirectoryPutsTheSocketUnderTmp() async throws {
        let root = TestDatabase.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let directory = root + "/" + String(repeating: "deep-", count: 20) + "/pg"
        let cluster = EmbeddedPostgres(directory: directory, logger: TestDatabase.logger)
        defer { cluster.stop() }
        let conninfo = try await onThread { try cluster.start() }
        #expect(conninfo.hasPrefix("host='/tmp/statefn-pg-"))
        let pool = PostgresPool(config: try PostgresConfig(conninfo), size: 1, logger: TestDatabase.logger)
        defer { pool.close() }
        #expect(try await pool.execute("SELECT current_user").rows == [["statefn"]])
    }

    @Test func aClusterTheServerAccountCannotReachIsExplained() async throws {
        let root = TestDatabase.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let hidden = root + "/private"
        try FileManager.default.createDirectory(atPath: hidden, withIntermediateDirectories: false)
        chmod(hidden, 0o700)
        let cluster = EmbeddedPostgres(directory: hidden + "/pg", logger: TestDatabase.logger)
        defer { cluster.stop() }
        let outcome = await expectPostgresError { _ = try await onThread { try cluster.start() } }
        if getuid() == 0 {
            // As root the server runs as another account, which cannot pass through a 0700 directory of root's.
            print("server-account check: ran as root (the server runs as another account, kept out of \(hidden))")
            #expect(outcome?.code == .invalidConfiguration)
            #expect(outcome?.detail.contains("\(hidden) is not searchable") == true)
        } else {
            // Our own directory: the server runs as us and gets in.
            print("server-account check: ran as uid \(getuid()) (the server runs as us; the root half did not run)")
            #expect(outcome == nil)
        }
    }
}
