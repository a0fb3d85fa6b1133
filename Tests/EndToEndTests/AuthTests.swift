// Authentication and authorization at the front door, through the built binary over real HTTP: API keys made with
// `statefn keys`, JWTs signed with real keys against a JWKS file, scopes, rate limits, and proof that a refused
// call never starts a worker or writes to the database.
import Foundation
import StatefnJSON
import StatefnPostgres
import StatefnTestSupport
import Synchronization
import Testing

@Suite("authentication, end to end", .timeLimit(.minutes(5)))
struct AuthTests {
    static let fixtures = GatewayProcess.repositoryRoot + "/Tests/EndToEndTests/Fixtures/functions"
    static let functions = GatewayProcess.repositoryRoot + "/functions"

    /// Runs the binary (`statefn keys …`) to completion; returns its exit status and stdout.
    static func statefn(_ arguments: [String], database: String) throws -> (status: Int32, output: String) {
        let (status, output, _) = try statefnWithErrors(arguments, database: database)
        return (status, output)
    }

    /// The same, with stderr too.
    static func statefnWithErrors(_ arguments: [String], database: String) throws
        -> (status: Int32, output: String, errors: String)
    {
        try runToEnd(
            GatewayProcess.binaryPath, arguments,
            environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "DATABASE_URL": database],
            timeout: 120)
    }

    static func createKey(_ database: String, name: String, scopes: [String]) throws -> String {
        let (status, output) = try statefn(
            ["keys", "create", "--name", name] + scopes.flatMap { ["--scope", $0] }, database: database)
        #expect(status == 0)
        return output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The gateway's child processes (its workers), from the process table.
    static func children(of pid: Int32) -> [String] {
        processTable().filter { $0.ppid == pid }.map { String($0.pid) }
    }

    static func bearer(_ token: String) -> [String: String] { ["Authorization": "Bearer " + token] }

    @Test("API keys: 401 reasons, scopes with {sub}, public commands, principal to the worker and the event log")
    func apiKeys() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await onThread {
            try GatewayProcess(
                arguments: ["--functions", Self.fixtures], environment: ["DATABASE_URL": database], authentication: .keysOnly)
        }
        let alice = try await onThread { try Self.createKey(database, name: "alice", scopes: ["invoke:whoami/{sub}"]) }
        let admin = try await onThread { try Self.createKey(database, name: "ops", scopes: ["admin:*"]) }
        #expect(alice.hasPrefix("sfn_"))
        try await onThread {
            let client = gateway.client()
            // Refusals first: no worker may have started for any of them, and nothing is written.
            let missing = try client.request("POST", "/v1/whoami/alice/note", body: "{}")
            #expect(missing.status == 401)
            #expect(missing.headers["www-authenticate"]?.hasPrefix("Bearer") == true)
            #expect(missing.headers["content-type"] == "application/problem+json")
            #expect(missing.text.contains("credentials are required"))
            let basic = try client.request(
                "POST", "/v1/whoami/alice/note", body: "{}", headers: ["Authorization": "Basic YTpi"])
            #expect(basic.status == 401)
            #expect(basic.headers["www-authenticate"]?.contains("malformed") == true)
            let unknown = try client.request(
                "POST", "/v1/whoami/alice/note", body: "{}",
                headers: Self.bearer("sfn_abcdef_" + String(repeating: "0", count: 64)))
            #expect(unknown.status == 401)
            #expect(unknown.headers["www-authenticate"]?.contains("unknown key") == true)
            let notAKey = try client.request(
                "POST", "/v1/whoami/alice/note", body: "{}", headers: Self.bearer("eyJ.x.y"))
            #expect(notAKey.status == 401)
            let bob = try client.request("POST", "/v1/whoami/bob/note", body: "{}", headers: Self.bearer(alice))
            #expect(bob.status == 403)
            #expect(bob.headers["www-authenticate"]?.contains("insufficient_scope") == true)
            #expect(
                try client.request("GET", "/v1/whoami/alice", headers: Self.bearer(alice)).status == 403,
                "invoke is not read")
            #expect(
                try client.request("GET", "/v1/functions", headers: Self.bearer(alice)).status == 403,
                "the function listing needs admin")
            #expect(try client.request("GET", "/v1/functions").status == 401)
            // Whether a function exists is no stranger's business: credentials come first.
            #expect(try client.request("POST", "/v1/nosuch/alice/note", body: "{}").status == 401)
            #expect(try client.request("POST", "/v1/nosuch/ping", body: "{}").status == 401)
            #expect(try client.request("GET", "/v1/nosuch/alice").status == 401)
            #expect(
                try client.request("POST", "/v1/nosuch/alice/note", body: "{}", headers: Self.bearer(alice)).status
                    == 403, "alice may invoke only whoami")
            let badOnPublic = try client.request(
                "POST", "/v1/whoami/x/hello", body: "{}", headers: Self.bearer("sfn_zz"))
            #expect(badOnPublic.status == 401, "a bad credential is refused even on a public command")

            #expect(Self.children(of: gateway.pid).isEmpty, "a refused call started a worker")
            let pool = PostgresPool(config: try PostgresConfig(database), size: 1, logger: .init(label: "test"))
            defer { pool.close() }
            let rows = try blockingQuery(
                pool, "SELECT (SELECT count(*) FROM entities) + (SELECT count(*) FROM entity_events)")
            #expect(rows == "0", "a refused call wrote to the database")

            // Allowed calls: the worker and the event log see who called.
            let mine = try client.request("POST", "/v1/whoami/alice/note", body: "{}", headers: Self.bearer(alice))
            #expect(mine.status == 200)
            #expect(!Self.children(of: gateway.pid).isEmpty, "the process check cannot see the worker it started")
            #expect(
                try JSONValue.parse(mine.text, limits: .client)["principal"]
                    == ["sub": "alice", "scopes": ["invoke:whoami/{sub}"]])
            let logged = try blockingQuery(pool, "SELECT principal::text FROM entity_events WHERE entity_id = 'alice'")
            #expect(
                logged.flatMap { try? JSONValue.parse($0, limits: .client) } == [
                    "sub": "alice", "scopes": ["invoke:whoami/{sub}"],
                ])
            let anonymous = try client.request("POST", "/v1/whoami/x/hello", body: "{}")
            #expect(anonymous.status == 200, "a public command needs no credentials")
            #expect(try JSONValue.parse(anonymous.text, limits: .client)["principal"] == .null)
            // admin covers read: past the door, to the store (whoami keeps no state, so 404).
            #expect(try client.request("GET", "/v1/whoami/alice", headers: Self.bearer(admin)).status == 404)
            let unknownFunction = try client.request(
                "POST", "/v1/nosuch/alice/note", body: "{}", headers: Self.bearer(admin))
            #expect(
                unknownFunction.status == 404, "a caller who could make the call hears that the function is unknown")
            #expect(unknownFunction.text.contains("unknown function nosuch"))
            #expect(try client.request("GET", "/healthz").status == 200)
        }

        // Revoked with the CLI: refused within the 30-second cache window.
        let id = String(alice.dropFirst(4).prefix(while: { $0 != "_" }))
        let (status, _) = try await onThread { try Self.statefn(["keys", "revoke", id], database: database) }
        #expect(status == 0)
        let listed = try await onThread { try Self.statefn(["keys", "list"], database: database).output }
        #expect(listed.contains(id) && !listed.contains(String(alice.suffix(64))), "list never shows a secret")
        let revoked = try await onThread {
            let client = gateway.client()
            for _ in 0..<90 {
                let response = try client.request(
                    "POST", "/v1/whoami/alice/note", body: "{}", headers: Self.bearer(alice))
                if response.status == 401 { return response }
                Thread.sleep(forTimeInterval: 0.5)
            }
            return try client.request("POST", "/v1/whoami/alice/note", body: "{}", headers: Self.bearer(alice))
        }
        #expect(revoked.status == 401)
        #expect(revoked.headers["www-authenticate"]?.contains("revoked") == true)
        #expect(gateway.stop() == 0)
    }

    /// API-key lookups the database has served: scans of api_keys, as its statistics count them. A backend
    /// reports them when it has been idle for 10 s, so this waits that long first.
    static func apiKeyLookups(_ database: String) async throws -> Int {
        try await Task.sleep(for: .seconds(11))
        let rows = try await ExactlyOnceTests.sql(
            database, "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'api_keys'")
        return Int(rows.first?[0] ?? "") ?? -1
    }

    @Test("2,000 random well-formed API keys from one address cost fewer than 100 lookups; a known key still works")
    func randomKeysFromOneAddress() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await onThread {
            try GatewayProcess(
                arguments: ["--functions", Self.fixtures], environment: ["DATABASE_URL": database], authentication: .keysOnly)
        }
        let alice = try await onThread { try Self.createKey(database, name: "alice", scopes: ["invoke:whoami/{sub}"]) }
        // Known before the flood: a cached key costs no lookup, so the flood cannot lock it out.
        let first = try await onThread {
            try gateway.client().request("POST", "/v1/whoami/alice/note", body: "{}", headers: Self.bearer(alice)).status
        }
        #expect(first == 200)
        let before = try await Self.apiKeyLookups(database)
        let statuses = try await onThreads(4) { _ -> [Int: Int] in
            let client = gateway.client()
            var statuses: [Int: Int] = [:]
            for _ in 0..<500 {
                let id = String(UUID().uuidString.lowercased().filter(\.isHexDigit).prefix(12))
                let secret = (0..<2).map { _ in UUID().uuidString.lowercased().filter(\.isHexDigit) }.joined()
                let response = try client.request(
                    "POST", "/v1/whoami/alice/note", body: "{}", headers: Self.bearer("sfn_\(id)_\(secret)"))
                // A 429 says when to come back; one without Retry-After is counted as its own kind.
                let status = response.status == 429 && response.header("retry-after") == nil ? -429 : response.status
                statuses[status, default: 0] += 1
            }
            return statuses
        }.reduce(into: [Int: Int]()) { total, part in total.merge(part, uniquingKeysWith: +) }
        #expect(statuses.values.reduce(0, +) == 2000)
        #expect(Set(statuses.keys).isSubset(of: [401, 429]), "\(statuses)")
        #expect((statuses[429] ?? 0) > 1800, "\(statuses)")
        let mine = try await onThread {
            try gateway.client().request("POST", "/v1/whoami/alice/note", body: "{}", headers: Self.bearer(alice)).status
        }
        #expect(mine == 200, "a known key from the same address still passes")
        let lookups = try await Self.apiKeyLookups(database) - before
        #expect(lookups < 100, "2,000 random keys cost \(lookups) lookups")
        #expect(gateway.stop() == 0)

        // The same flood with the limit off: every unknown id is a lookup. This is what the limit saves.
        let unlimited = try await onThread {
            try GatewayProcess(
                arguments: ["--functions", Self.fixtures, "--auth-failure-limit", "off"],
                environment: ["DATABASE_URL": database], authentication: .keysOnly)
        }
        let base = try await Self.apiKeyLookups(database)
        try await onThread {
            let client = unlimited.client()
            for _ in 0..<300 {
                let id = String(UUID().uuidString.lowercased().filter(\.isHexDigit).prefix(12))
                let response = try client.request(
                    "POST", "/v1/whoami/alice/note", body: "{}",
                    headers: Self.bearer("sfn_\(id)_" + String(repeating: "a", count: 64)))
                #expect(response.status == 401)
            }
        }
        let unlimitedLookups = try await Self.apiKeyLookups(database) - base
        #expect(unlimitedLookups >= 300, "without the limit each random key is a lookup: \(unlimitedLookups)")
        #expect(unlimited.stop() == 0)
    }

    @Test("JWTs from a JWKS file: algorithms, alg confusion, none, aud, iss, exp, nbf, Keycloak roles")
    func jwt() async throws {
        let database = try await TestDatabase.createDatabase()
        let keys = try TestKeys()
        let jwksPath = NSTemporaryDirectory() + "statefn-jwks-" + UUID().uuidString + ".json"
        try Data(TestKeys.jwks([try keys.rsaJWK(kid: "r1"), keys.ecJWK(kid: "e1"), keys.hmacJWK(kid: "h1")]))
            .write(to: URL(fileURLWithPath: jwksPath))
        defer { try? FileManager.default.removeItem(atPath: jwksPath) }
        let gateway = try await onThread {
            try GatewayProcess(
                arguments: [
                    "--functions", Self.fixtures, "--jwks-file", jwksPath, "--jwt-audience", "statefn",
                    "--jwt-issuer", "https://id.example",
                ], environment: ["DATABASE_URL": database], authentication: .keysOnly)
        }
        let now = Date().timeIntervalSince1970
        var keycloak = TestClaims.valid(sub: "alice", scope: "openid profile")
        keycloak.realm_access = .init(roles: ["invoke:whoami/{sub}", "offline_access"])
        var future = TestClaims.valid()
        future.nbf = Int(now) + 3600
        let tokens = (
            rsa: try await keys.signRSA(keycloak, kid: "r1"),
            ec: try await keys.signEC(keycloak, kid: "e1"),
            hmac: try await keys.signHMAC(keycloak, kid: "h1"),
            confused: try await keys.confusedToken(keycloak, kid: "r1"),
            none: try TestKeys.unsignedToken(keycloak, kid: "r1"),
            audience: try await keys.signRSA(.valid(audience: "other"), kid: "r1"),
            issuer: try await keys.signRSA(.valid(issuer: "https://evil.example"), kid: "r1"),
            expired: try await keys.signRSA(.valid(now: now - 7200), kid: "r1"),
            future: try await keys.signRSA(future, kid: "r1"),
            unknownKid: try await keys.signRSA(keycloak, kid: "r9")
        )
        try await onThread {
            let client = gateway.client()
            func call(_ token: String, entity: String = "alice") throws -> TestHTTPResponse {
                try client.request("POST", "/v1/whoami/\(entity)/note", body: "{}", headers: Self.bearer(token))
            }
            for token in [tokens.rsa, tokens.ec, tokens.hmac] {
                let response = try call(token)
                #expect(response.status == 200, "\(response.text)")
                #expect(
                    try JSONValue.parse(response.text, limits: .client)["principal"]?["scopes"]
                        == ["openid", "profile", "invoke:whoami/{sub}", "offline_access"])
            }
            #expect(try call(tokens.rsa, entity: "bob").status == 403)
            let refusals: [(String, String)] = [
                (tokens.confused, "bad signature"), (tokens.none, "bad signature"), (tokens.audience, "invalid claims"),
                (tokens.issuer, "invalid claims"), (tokens.expired, "expired"), (tokens.future, "invalid claims"),
                (tokens.unknownKid, "unknown key"), (String(repeating: "a", count: 10_000), "malformed"),
            ]
            for (token, reason) in refusals {
                let response = try call(token)
                #expect(response.status == 401, "\(reason): \(response.text)")
                #expect(response.headers["www-authenticate"]?.contains(reason) == true, "\(reason)")
            }
        }
        #expect(gateway.stop() == 0)
    }

    @Test("rate limits answer 429 with Retry-After, per key")
    func rateLimit() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await onThread {
            try GatewayProcess(
                arguments: ["--functions", Self.fixtures, "--rate-limit", "1/min", "--rate-burst", "2"],
                environment: ["DATABASE_URL": database], authentication: .keysOnly)
        }
        let first = try await onThread { try Self.createKey(database, name: "one", scopes: ["invoke:whoami"]) }
        let second = try await onThread { try Self.createKey(database, name: "two", scopes: ["invoke:whoami"]) }
        try await onThread {
            let client = gateway.client()
            let statuses = try (0..<3).map { _ in
                try client.request("GET", "/v1/whoami/x/peek", headers: Self.bearer(first))
            }
            #expect(statuses.map(\.status) == [200, 200, 429])
            #expect(statuses[2].headers["retry-after"].flatMap { Int($0) }.map { $0 >= 1 } == true)
            #expect(statuses[2].headers["content-type"] == "application/problem+json")
            #expect(try client.request("GET", "/v1/whoami/x/peek", headers: Self.bearer(second)).status == 200)
        }
        #expect(gateway.stop() == 0)
    }

    @Test("--insecure-no-auth is refused off loopback; --dev-key creates a working admin key once")
    func startUp() async throws {
        // With a database that works, so that the address is the only thing wrong.
        let database = try await TestDatabase.createDatabase()
        for address in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
            let (status, _, errors) = try await onThread {
                try Self.statefnWithErrors(
                    ["serve", "--insecure-no-auth", "--listen", address, "--functions", Self.functions],
                    database: database)
            }
            #expect(status != 0)
            #expect(
                errors.contains("--insecure-no-auth only works on a loopback address"), "\(address): \(errors)")
        }

        let dataDir = NSTemporaryDirectory() + "statefn-devkey-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        var keys: [String] = []
        for _ in 0..<2 {
            let gateway = try await onThread {
                try GatewayProcess(
                    arguments: ["--functions", Self.functions, "--data-dir", dataDir, "--dev-key"],
                    environment: ["DATABASE_URL": database], authentication: .keysOnly)
            }
            let key = try String(contentsOfFile: dataDir + "/dev-key", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            let mode = try FileManager.default.attributesOfItem(atPath: dataDir + "/dev-key")[.posixPermissions] as? Int
            #expect(mode == 0o600)
            keys.append(key)
            try await onThread { () throws -> Void in
                let client = gateway.client()
                #expect(try client.request("POST", "/v1/counter/a/increment", body: "{}").status == 401)
                #expect(
                    try client.request("POST", "/v1/counter/a/increment", body: "{}", headers: Self.bearer(key)).status
                        == 200)
                #expect(try client.request("GET", "/v1/counter/a/get").status == 200, "get is public for counter")
                #expect(try client.request("GET", "/v1/functions", headers: Self.bearer(key)).status == 200)
            }
            #expect(gateway.stop() == 0)
        }
        #expect(keys[0] == keys[1], "the development key is kept across restarts")
    }
}

/// One value from a query, run on this (non-cooperative) thread.
private func blockingQuery(_ pool: PostgresPool, _ sql: String) throws -> String? {
    let result = Mutex<Result<String?, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Task {
        do {
            let rows = try await pool.execute(sql).rows
            result.withLock { $0 = .success(rows.first?[0] ?? nil) }
        } catch {
            result.withLock { $0 = .failure(error) }
        }
        done.signal()
    }
    done.wait()
    return try result.withLock { $0! }.get()
}
