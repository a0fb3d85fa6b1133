// What a function may touch (DESIGN.md section 10), asserted from the function's side: a hostile fixture tries to
// read the gateway's environment and memory, signal it, read the dev key, the data directory and the database
// password, log in to the database, and write into functions/, as a warm worker and as a fork run, on the embedded
// cluster and on an external PostgreSQL; and a child it leaves behind in a session of its own dies with it.
import Foundation
import StatefnJSON
import StatefnTestSupport
import Testing

@Suite("worker isolation, end to end", .serialized, .timeLimit(.minutes(5)))
struct IsolationTests {
    /// What the gateway serves and the hostile function attacks (a copy the worker account can reach, when the
    /// checkout is somewhere it cannot: `GatewayProcess.reachable`).
    static let fixtures = GatewayProcess.reachable(GatewayProcess.repositoryRoot + "/Tests/EndToEndTests/Fixtures/functions")

    /// What the hostile function reports for each attack, as `function` (warm or fork) under `gateway`.
    static func probe(
        _ gateway: GatewayProcess, _ function: String, data: String, password: String, socket: String?
    ) throws -> [String: String] {
        var paths: [(String, JSONValue)] = [
            ("functions", .string(fixtures)), ("data", .string(data)), ("password", .string(password)),
        ]
        if let socket { paths.append(("socket", .string(socket))) }
        let response = try gateway.client().request(
            "POST", "/v1/\(function)/probe/probe", body: JSONValue.object(JSONObject(paths)).encodedString())
        #expect(response.status == 200, "\(response.status) \(response.text)")
        let reply = try JSONValue.parse(response.text, limits: .client)
        guard case .object(let fields) = reply else { return [:] }
        return Dictionary(fields.map { ($0.key, $0.value.stringValue ?? $0.value.encodedString()) }) { $1 }
    }

    /// Every attack is refused, and what a function needs (its HOME, the system's files) still works.
    /// The Landlock ABI the gateway logged at start-up, if it has Landlock.
    static func landlockABI(_ gateway: GatewayProcess) -> Int? {
        for line in gateway.logs {
            guard let range = line.range(of: #""landlock_abi":"\d+""#, options: .regularExpression) else { continue }
            return Int(line[range].dropFirst(#""landlock_abi":""#.count).dropLast())
        }
        return nil
    }

    static func expectConfined(
        _ report: [String: String], gateway: GatewayProcess, data: String, mode: String, gatewayIsRoot: Bool = true
    ) {
        var confined = [
            "gateway_environ", "gateway_memory", "dev_key", "list_data_dir", "database_password",
            "write_functions", "change_manifest", "change_own_code", "terminal",
        ]
        #expect(report["own_session"] == "yes", "\(mode): a worker leads a session of its own (no terminal)")
        // Another account cannot signal the gateway; the gateway's own account can, unless Landlock scopes signals
        // (ABI 6, Linux 6.12).
        if gatewayIsRoot || (landlockABI(gateway) ?? 0) >= 6 { confined.append("signal_gateway") }
        for attack in confined {
            #expect(report[attack]?.hasPrefix("denied") == true, "\(mode): \(attack) was \(report[attack] ?? "not tried")")
        }
        if let login = report["database_login"] {
            #expect(login.hasPrefix("denied"), "\(mode): database_login was \(login)")
        }
        #expect(report["read_system"]?.hasPrefix("allowed") == true, "\(mode): \(report)")
        #expect(report["write_home"]?.hasPrefix("allowed") == true, "\(mode): its HOME is its own: \(report)")
        let home = report["home"] ?? ""
        #expect(home.hasPrefix(data + "/scratch/") && !home.hasPrefix(fixtures), "\(mode): HOME is \(home)")
        if gatewayIsRoot {
            #expect(report["uid"] != "0", "\(mode): a worker must not run as root")
            #expect(
                gateway.logs.contains { $0.contains("workers run as the account statefn-worker") },
                "the start-up log names the workers' account")
        }
        // Landlock, where the kernel has it, keeps a worker out of /tmp; the log says which it is.
        if gateway.logs.contains(where: { $0.contains("Landlock confines workers") }) {
            #expect(report["write_tmp"]?.hasPrefix("denied") == true, "\(mode): Landlock: \(report["write_tmp"] ?? "")")
        } else {
            #expect(gateway.logs.contains { $0.contains("Landlock is not available") })
        }
        #expect(!FileManager.default.fileExists(atPath: fixtures + "/planted"))
    }

    /// The pid of a child the function left in a session of its own, after checking that it is alive there.
    static func escapedChild(_ gateway: GatewayProcess, _ function: String) throws -> pid_t {
        let response = try gateway.client().request("POST", "/v1/\(function)/escape/escape", body: "{}")
        #expect(response.status == 200, "\(response.status) \(response.text)")
        let reply = try JSONValue.parse(response.text, limits: .client)
        let pid = pid_t(truncatingIfNeeded: reply["escaped"]?.integerValue ?? 0)
        #expect(pid > 1)
        #expect(reply["sid"]?.integerValue == Int64(pid), "the child leads a session of its own")
        return pid
    }

    /// Whether `pid` is gone (not even a zombie) within `seconds`.
    static func disappears(_ pid: pid_t, within seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if !FileManager.default.fileExists(atPath: "/proc/\(pid)") { return true }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return false
    }

    @Test("on the embedded cluster, a hostile function reaches nothing of the gateway's, warm or forked")
    func hostileFunctionOnTheEmbeddedCluster() async throws {
        let data = TestDatabase.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: data) }
        try await onThread {
            let gateway = try GatewayProcess(arguments: ["--functions", Self.fixtures, "--data-dir", data])
            defer { gateway.stop() }
            let socket = data + "/pg/sock/.s.PGSQL.5432"
            #expect(FileManager.default.fileExists(atPath: socket))
            let hba = try String(contentsOfFile: data + "/pg/pg_hba.conf", encoding: .utf8)
            #expect(
                hba.split(separator: "\n").filter { !$0.hasPrefix("#") && !$0.isEmpty } == ["local all all scram-sha-256"],
                "pg_hba.conf admits password logins only: \(hba)")
            var info = stat()
            #expect(stat(data + "/pg-password", &info) == 0 && info.st_mode & 0o777 == 0o600 && info.st_uid == getuid())
            for function in ["hostile", "hostile-fork"] {
                let report = try Self.probe(gateway, function, data: data, password: data + "/pg-password", socket: socket)
                Self.expectConfined(report, gateway: gateway, data: data, mode: function)
            }

            // A child that calls setsid leaves the worker's process group, and the group's SIGKILL misses it; the
            // gateway, a child subreaper, gets it back when the worker goes, and kills it.
            let warmChild = try Self.escapedChild(gateway, "hostile")
            #expect(kill(warmChild, 0) == 0, "alive while its worker is")
            #expect(try gateway.client().request("POST", "/v1/hostile/escape/crash", body: "{}").status == 502)
            #expect(Self.disappears(warmChild, within: 5), "the warm worker's escaped child \(warmChild) outlived it")
            let forkChild = try Self.escapedChild(gateway, "hostile-fork")
            #expect(Self.disappears(forkChild, within: 5), "the fork run's escaped child \(forkChild) outlived it")
            #expect(gateway.logs.contains { $0.contains("killing a process a worker left behind") })
        }
    }

    /// The orphan sweep runs after every reap, while other fork runs are being spawned: a worker spawned a moment
    /// ago, not yet taken on by the pool, must never look like an orphan to it.
    @Test("fork runs spawned while others are reaped are never taken for orphans")
    func forkRunsUnderLoadAreNotOrphans() async throws {
        let data = TestDatabase.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: data) }
        let gateway = try await onThread { try GatewayProcess(arguments: ["--functions", Self.fixtures, "--data-dir", data]) }
        defer { gateway.stop() }
        let statuses = try await onThreads(4) { _ in
            let http = gateway.client()
            return try (0..<500).map { _ in try http.request("POST", "/v1/quickfork/ping", body: "{}").status }
        }.flatMap { $0 }
        let errors = gateway.logs.filter { $0.contains("\"level\":\"error\"") }.prefix(5)
        #expect(statuses.allSatisfy { $0 == 200 }, "\(Dictionary(grouping: statuses) { $0 }.mapValues(\.count)): \(errors)")
        #expect(!gateway.logs.contains { $0.contains("killing a process a worker left behind") }, "a fork run was killed")
    }

    @Test("not as root, workers keep the gateway's account and every other layer, and the start-up log says so")
    func hostileFunctionUnderAnUnprivilegedGateway() async throws {
        try #require(getuid() == 0, "needs root to start the gateway as another account")
        let data = TestDatabase.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: data) }
        let nobody: (uid: uid_t, gid: gid_t) = (65534, 65534)
        chown(data, nobody.uid, nobody.gid)
        try await onThread {
            let gateway = try GatewayProcess(
                arguments: ["--functions", Self.fixtures, "--data-dir", data], runAs: nobody)
            defer { gateway.stop() }
            #expect(gateway.logs.contains { $0.contains("statefn is not running as root") })
            for function in ["hostile", "hostile-fork"] {
                let report = try Self.probe(
                    gateway, function, data: data, password: data + "/pg-password",
                    socket: data + "/pg/sock/.s.PGSQL.5432")
                #expect(report["uid"] == "65534", "\(report)")
                // The same account: only Landlock keeps the worker out of the data directory and the gateway's
                // signals; without it, those two are the gateway's account's to give.
                if gateway.logs.contains(where: { $0.contains("Landlock confines workers") }) {
                    Self.expectConfined(report, gateway: gateway, data: data, mode: function + " as nobody", gatewayIsRoot: false)
                } else {
                    for attack in ["gateway_environ", "gateway_memory", "database_login", "write_functions"] {
                        #expect(report[attack]?.hasPrefix("denied") == true, "\(attack): \(report)")
                    }
                }
            }
        }
    }

    @Test("on an external PostgreSQL, a hostile function cannot find the connection string or its password")
    func hostileFunctionOnAnExternalDatabase() async throws {
        let database = try await TestDatabase.createDatabase()
        let passfile = try #require(
            database.range(of: #"passfile='[^']+'"#, options: .regularExpression).map {
                String(database[$0].dropFirst("passfile='".count).dropLast())
            }, "the test cluster's conninfo names its password file: \(database)")
        let data = TestDatabase.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: data) }
        try await onThread {
            let gateway = try GatewayProcess(
                arguments: ["--functions", Self.fixtures, "--data-dir", data], environment: ["DATABASE_URL": database])
            defer { gateway.stop() }
            let socketDirectory = database.range(of: #"host='[^']+'"#, options: .regularExpression).map {
                String(database[$0].dropFirst("host='".count).dropLast())
            }
            for function in ["hostile", "hostile-fork"] {
                let report = try Self.probe(
                    gateway, function, data: data, password: passfile, socket: socketDirectory.map { $0 + "/.s.PGSQL.5432" })
                Self.expectConfined(report, gateway: gateway, data: data, mode: function)
            }
        }
    }
}
