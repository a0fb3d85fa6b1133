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

    /// Only the password opens the cluster (DESIGN.md section 10): pg_hba.conf admits scram-sha-256 logins alone,
    /// the password is in a 0600 file of ours, and a cluster made before passwords gets one at its next start.
    @Test func theClusterTakesOnlyItsPassword() async throws {
        let root = TestDatabase.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let cluster = EmbeddedPostgres(directory: root + "/pg", logger: TestDatabase.logger)
        defer { cluster.stop() }
        let conninfo = try await onThread { try cluster.start() }
        #expect(cluster.passwordFile == root + "/pg-password")
        var info = stat()
        #expect(stat(cluster.passwordFile, &info) == 0 && info.st_mode & 0o777 == 0o600 && info.st_uid == getuid())
        let withoutPassword = conninfo.replacingOccurrences(
            of: #" passfile='[^']*'"#, with: "", options: .regularExpression)
        #expect(withoutPassword != conninfo)
        func connects(_ conninfo: String) async -> PostgresError? {
            let pool = PostgresPool(config: try! PostgresConfig(conninfo), size: 1, logger: TestDatabase.logger)
            defer { pool.close() }
            do {
                _ = try await pool.execute("SELECT 1")
                return nil
            } catch let error as PostgresError {
                return error
            } catch {
                return PostgresError(code: .connectionFailed, detail: "\(error)")
            }
        }
        #expect(await connects(conninfo) == nil)
        let refused = await connects(withoutPassword)
        #expect(refused?.detail.contains("password") == true, "\(String(describing: refused))")

        // A cluster from before passwords: no password file, trust on the socket. Its next start sets one.
        try await onThread { cluster.stop() }
        unlink(cluster.passwordFile)
        try "local all all trust\n".write(toFile: root + "/pg/pg_hba.conf", atomically: false, encoding: .utf8)
        let again = try await onThread { try cluster.start() }
        #expect(await connects(again) == nil)
        #expect(await connects(withoutPassword) != nil, "the old trust rule is gone")
        let hba = try String(contentsOfFile: root + "/pg/pg_hba.conf", encoding: .utf8)
        #expect(hba.contains("local all all scram-sha-256") && !hba.contains("trust"))
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
