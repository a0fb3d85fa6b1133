// Exactly once, through the built binary (DESIGN.md section 4): the cache never acknowledges what the database does
// not hold, names compare by bytes, contention is absorbed by the conflict budget, Idempotency-Key replays, unknown
// commit outcomes are read back, and a shutdown never answers 503 for a command that then commits. Several replicas
// over one real PostgreSQL where the behaviour is about replicas.
import Foundation
import StatefnJSON
import StatefnPostgres
import StatefnTestSupport
import Testing

@Suite("exactly once, end to end", .timeLimit(.minutes(5)))
struct ExactlyOnceTests {
    static let fixtures = GatewayProcess.repositoryRoot + "/Tests/EndToEndTests/Fixtures/functions"

    static func replicas(
        _ count: Int, database: String, functions: String = fixtures, arguments: [String] = [],
        authentication: GatewayProcess.Authentication = .devKey
    ) async throws -> [GatewayProcess]
    {
        let start = { @Sendable in
            try GatewayProcess(
                arguments: ["--functions", functions] + arguments, environment: ["DATABASE_URL": database],
                authentication: authentication)
        }
        // One first, so that the others find the schema migrated.
        let first = try await onThread(start)
        return try await [first] + onThreads(count - 1) { _ in try start() }
    }

    static func post(
        _ gateway: GatewayProcess, _ path: String, _ body: String = "{}", headers: [String: String] = [:]
    ) async throws -> TestHTTPResponse {
        try await onThread { try gateway.client().request("POST", path, body: body, headers: headers) }
    }

    static func get(_ gateway: GatewayProcess, _ path: String, headers: [String: String] = [:]) async throws
        -> TestHTTPResponse
    {
        try await onThread { try gateway.client().request("GET", path, headers: headers) }
    }

    static func json(_ response: TestHTTPResponse) throws -> JSONValue {
        try JSONValue.parse(response.text, limits: .client)
    }

    static func sql(_ database: String, _ statement: String) async throws -> [[String?]] {
        let pool = PostgresPool(config: try PostgresConfig(database), size: 1, logger: TestDatabase.logger)
        defer { pool.close() }
        return try await pool.execute(statement).rows
    }

    /// Runs a script of several statements (a test's own triggers, say).
    static func script(_ database: String, _ sql: String) async throws {
        let pool = PostgresPool(config: try PostgresConfig(database), size: 1, logger: TestDatabase.logger)
        defer { pool.close() }
        try await pool.withConnection { try $0.executeScript(sql) }
    }

    /// How many requests the workers of `function` have served on `gateway`, from `GET /v1/functions`.
    static func served(_ gateway: GatewayProcess, _ function: String) async throws -> Int {
        let listing = try json(try await get(gateway, "/v1/functions"))
        guard case .array(let functions)? = listing["functions"] else { return -1 }
        for entry in functions where entry["name"]?.stringValue == function {
            guard case .array(let workers)? = entry["workers"] else { return 0 }
            return workers.compactMap { $0["requests_served"]?.integerValue }.reduce(0) { $0 + Int($1) }
        }
        return -1
    }

    /// Waits (up to 60 s: a loaded machine can take seconds to bring a request that far) until a worker of
    /// `function` is busy on `gateway`: a request is in the pool, on a worker or on one starting for it.
    static func waitUntilBusy(_ gateway: GatewayProcess, _ function: String) async throws {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let listing = try json(try await get(gateway, "/v1/functions"))
            let entry = listing["functions"]?.arrayValue?.first { $0["name"]?.stringValue == function }
            if (entry?["busy"]?.integerValue ?? 0) > 0 { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("no worker of \(function) became busy")
    }

    @Test("a replica's stale cache never answers: an equal new state still commits, a no-op reads the database")
    func staleCacheNeverAnswers() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateways = try await Self.replicas(2, database: database)
        let (a, b) = (gateways[0], gateways[1])

        var response = try await Self.post(a, "/v1/register/r/set", #"{"v":1}"#)
        #expect(response.status == 200 && response.headers["etag"] == "\"1\"")  // a caches {"v":1} at version 1
        response = try await Self.post(b, "/v1/register/r/set", #"{"v":2}"#)
        #expect(response.headers["etag"] == "\"2\"")

        // On a, the new state equals a's stale copy: it must still reach the database.
        response = try await Self.post(a, "/v1/register/r/set", #"{"v":1}"#)
        #expect(response.status == 200)
        #expect(response.headers["etag"] == "\"3\"", "answered from a stale cache: \(response.headers)")
        var rows = try await Self.sql(
            database, "SELECT state::text, version FROM entities WHERE function = 'register' AND entity_id = 'r'")
        #expect(rows.first?[0] == #"{"v": 1}"# && rows.first?[1] == "3")

        // A command that changes nothing, on a stale copy, answers what the database holds.
        response = try await Self.post(b, "/v1/register/r/set", #"{"v":5}"#)
        #expect(response.headers["etag"] == "\"4\"")
        response = try await Self.post(a, "/v1/register/r/peek")
        #expect(try Self.json(response) == ["state": ["v": 5], "version": 4], "\(response.text)")
        #expect(response.headers["etag"] == "\"4\"")

        // A business error decided on a stale copy is decided again on the real one.
        response = try await Self.post(b, "/v1/register/r/set", #"{"v":6}"#)
        response = try await Self.post(a, "/v1/register/r/refuse")
        #expect(response.status == 409)
        #expect(response.text.contains("refused at version 5"), "\(response.text)")

        // A delete through one replica, and a re-create through the other: the first's copy cannot write over it.
        response = try await Self.post(a, "/v1/register/d/set", #"{"v":"a"}"#)
        response = try await Self.post(b, "/v1/register/d/remove")
        #expect(response.status == 200 && response.headers["etag"] == "\"2\"")
        #expect(try await Self.get(b, "/v1/register/d").status == 404)
        response = try await Self.post(b, "/v1/register/d/incr")
        #expect(response.headers["etag"] == "\"3\"")
        response = try await Self.post(a, "/v1/register/d/incr")
        #expect(try Self.json(response) == ["n": 2], "\(response.text)")
        rows = try await Self.sql(
            database, "SELECT state::text, version FROM entities WHERE function = 'register' AND entity_id = 'd'")
        #expect(rows.first?[0] == #"{"n": 2}"# && rows.first?[1] == "4")
        for gateway in gateways { #expect(gateway.stop() == 0) }
    }

    @Test("a new state that differs only in Unicode spelling is a change, and is committed")
    func respelledStateCommits() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.replicas(1, database: database)[0]
        var response = try await Self.post(gateway, "/v1/register/spell/set", #"{"name":"caf\u00e9"}"#)
        #expect(response.headers["etag"] == "\"1\"")
        response = try await Self.post(gateway, "/v1/register/spell/set", #"{"name":"cafe\u0301"}"#)
        #expect(response.headers["etag"] == "\"2\"", "a respelled state was taken for the same state")
        let rows = try await Self.sql(
            database,
            "SELECT encode(convert_to(state->>'name', 'UTF8'), 'hex') FROM entities WHERE entity_id = 'spell'")
        #expect(rows.first?[0] == "63616665cc81")
        #expect(gateway.stop() == 0)
    }

    @Test("If-Match is checked against the database, not the cache; If-None-Match on raw state answers 304")
    func conditionalRequests() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateways = try await Self.replicas(2, database: database)
        let (a, b) = (gateways[0], gateways[1])
        _ = try await Self.post(a, "/v1/register/c/set", #"{"v":1}"#)
        _ = try await Self.post(b, "/v1/register/c/set", #"{"v":2}"#)
        var response = try await Self.post(a, "/v1/register/c/incr", headers: ["If-Match": "\"2\""])
        #expect(response.status == 200, "a's cache still says version 1: \(response.text)")
        #expect(response.headers["etag"] == "\"3\"")
        response = try await Self.post(a, "/v1/register/c/incr", headers: ["If-Match": "\"2\""])
        #expect(response.status == 412)

        response = try await Self.get(a, "/v1/register/c", headers: ["If-None-Match": "\"3\""])
        #expect(response.status == 304 && response.body.isEmpty && response.headers["etag"] == "\"3\"")
        response = try await Self.get(a, "/v1/register/c", headers: ["If-None-Match": "W/\"1\", \"3\""])
        #expect(response.status == 304)
        response = try await Self.get(a, "/v1/register/c", headers: ["If-None-Match": "\"2\""])
        #expect(response.status == 200 && response.headers["etag"] == "\"3\"")
        for gateway in gateways { #expect(gateway.stop() == 0) }
    }

    @Test("names compare by bytes: é as U+00E9 and as e+U+0301 are two entities; {sub} for KELVIN SIGN K is not Kate")
    func bytesNotCanonicalEquivalence() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.replicas(1, database: database, authentication: .keysOnly)[0]
        let admin = try await onThread { try AuthTests.createKey(database, name: "ops", scopes: ["admin:*"]) }
        let kelvin = try await onThread {
            try AuthTests.createKey(database, name: "\u{212A}ate", scopes: ["invoke:register/{sub}"])
        }
        let asAdmin = AuthTests.bearer(admin)

        // Concurrently, so that a mailbox or cache keyed by String would merge them.
        let statuses = try await onThreads(8) { index in
            let path = index % 2 == 0 ? "/v1/register/caf%C3%A9/incr" : "/v1/register/cafe%CC%81/incr"
            return try (0..<10).map { _ in try gateway.client().request("POST", path, body: "{}", headers: asAdmin).status }
        }
        #expect(statuses.flatMap { $0 }.allSatisfy { $0 == 200 })
        let rows = try await Self.sql(
            database,
            "SELECT encode(convert_to(entity_id, 'UTF8'), 'hex'), state::text, version FROM entities ORDER BY 1")
        #expect(rows.map { $0[0] } == ["63616665cc81", "636166c3a9"])
        #expect(rows.map { $0[1] } == [#"{"n": 40}"#, #"{"n": 40}"#])
        #expect(rows.map { $0[2] } == ["40", "40"])

        var response = try await Self.post(
            gateway, "/v1/register/%E2%84%AAate/incr", headers: AuthTests.bearer(kelvin))
        #expect(response.status == 200)
        response = try await Self.post(gateway, "/v1/register/Kate/incr", headers: AuthTests.bearer(kelvin))
        #expect(response.status == 403, "{sub} of \\u{212A}ate reached Kate: \(response.status)")
        #expect(gateway.stop() == 0)
    }

    @Test("one hot entity, 8 clients through 2 replicas: at least 99% commit, and the count equals the 200s")
    func contentionWithinBudget() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateways = try await Self.replicas(2, database: database)
        let statuses = try await onThreads(8) { index in
            let client = gateways[index % 2].client()
            return try (0..<150).map { _ in try client.request("POST", "/v1/register/hot/incr", body: "{}").status }
        }.flatMap { $0 }
        let ok = statuses.filter { $0 == 200 }.count
        #expect(statuses.allSatisfy { $0 == 200 || $0 == 409 }, "statuses: \(Set(statuses))")
        #expect(ok * 100 >= statuses.count * 99, "\(ok) of \(statuses.count) committed")
        let final = try Self.json(try await Self.get(gateways[1], "/v1/register/hot"))
        #expect(final["state"]?["n"]?.integerValue == Int64(ok))
        for gateway in gateways { #expect(gateway.stop() == 0) }
    }

    @Test("a hot entity's queued commands run one after another and commit together: each 200 counted once, one version each, keyed repeats replay their own answer")
    func hotEntityBatches() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.replicas(1, database: database)[0]
        let answers = try await onThreads(16) { thread in
            let client = gateway.client()
            return try (0..<40).map { index in
                let response = try client.request(
                    "POST", "/v1/register/batched/incr", body: "{}", headers: ["Idempotency-Key": "t\(thread)-\(index)"])
                return (thread, index, response.status, response.text, response.headers["etag"] ?? "")
            }
        }.flatMap { $0 }
        #expect(answers.allSatisfy { $0.2 == 200 }, "statuses: \(Set(answers.map(\.2)))")
        // Each command ran on the state the one before it left, and its ETag is the version of the state it made.
        let counts = answers.compactMap { answer -> Int64? in
            guard let reply = try? JSONValue.parse(answer.3, limits: .client), let n = reply["n"]?.integerValue else { return nil }
            #expect(answer.4 == "\"\(n)\"", "reply \(answer.3) has ETag \(answer.4)")
            return n
        }
        #expect(counts.sorted() == Array(1...640))
        let rows = try await Self.sql(
            database, "SELECT state::text, version FROM entities WHERE function = 'register' AND entity_id = 'batched'")
        #expect(rows.first?[0] == #"{"n": 640}"# && rows.first?[1] == "640")
        // Records of one commit share its transaction's now(): fewer distinct times than records means commands
        // were committed together.
        let commits = try await Self.sql(
            database, "SELECT count(*), count(DISTINCT expires_at) FROM idempotency WHERE entity_id = 'batched'")
        #expect(commits.first?[0] == "640")
        let distinct = Int(commits.first?[1] ?? "") ?? 0
        #expect(distinct > 0 && distinct < 640, "\(distinct) commits for 640 commands: nothing was batched")
        for answer in answers.filter({ $0.1 % 10 == 3 }).prefix(16) {
            let repeated = try await Self.post(
                gateway, "/v1/register/batched/incr", headers: ["Idempotency-Key": "t\(answer.0)-\(answer.1)"])
            #expect(repeated.text == answer.3 && repeated.headers["idempotent-replayed"] == "true")
            #expect(repeated.headers["etag"] == answer.4)
        }
        #expect(gateway.stop() == 0)
    }

    @Test("two writers through two replicas with a tiny budget: lost compare-and-sets re-run, then 409, and the count is the 200s")
    func twoWritersRunOutOfBudget() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateways = try await Self.replicas(2, database: database, arguments: ["--conflict-budget", "3ms"])
        let statuses = try await onThreads(8) { index in
            let client = gateways[index % 2].client()
            return try (0..<60).map { _ in try client.request("POST", "/v1/register/duel/incr", body: "{}").status }
        }.flatMap { $0 }
        var runs = 0
        for gateway in gateways { runs += try await Self.served(gateway, "register") }
        let ok = statuses.filter { $0 == 200 }.count
        let conflicts = statuses.filter { $0 == 409 }.count
        #expect(ok + conflicts == statuses.count, "statuses: \(Set(statuses))")
        #expect(conflicts > 0, "two writers with a 3 ms budget never ran out of it")
        #expect(runs > statuses.count, "no lost compare-and-set was run again: \(runs) runs for \(statuses.count)")
        let final = try Self.json(try await Self.get(gateways[0], "/v1/register/duel"))
        #expect(final["state"]?["n"]?.integerValue == Int64(ok), "a 409 committed, or a 200 did not")
        for gateway in gateways { #expect(gateway.stop() == 0) }
    }

    @Test("a conflict is answered 409 only once the budget is spent")
    func conflictWaitsForTheBudget() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.replicas(1, database: database, arguments: ["--conflict-budget", "700ms"])[0]
        _ = try await Self.post(gateway, "/v1/register/moving/set", #"{"n":0}"#)
        // Every compare-and-set on this entity loses, as if another writer always got there first: the trigger
        // turns the UPDATE into no row, which is what a moved version looks like to the gateway.
        try await Self.script(
            database,
            """
            CREATE FUNCTION statefn_test_always_moved() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN IF NEW.entity_id = 'moving' THEN RETURN NULL; END IF; RETURN NEW; END $$;
            CREATE TRIGGER statefn_test_moved BEFORE UPDATE ON entities FOR EACH ROW
            EXECUTE FUNCTION statefn_test_always_moved();
            """)
        let runsBefore = try await Self.served(gateway, "register")
        let started = Date()
        let response = try await Self.post(gateway, "/v1/register/moving/incr")
        let elapsed = Date().timeIntervalSince(started)
        let runs = try await Self.served(gateway, "register") - runsBefore
        #expect(response.status == 409)
        #expect(runs >= 3, "each lost compare-and-set reloads and runs again; the worker ran \(runs) times")
        #expect(response.headers["retry-after"] != nil)
        #expect(elapsed >= 0.7, "409 after \(elapsed) s, before the 700 ms budget")
        #expect(elapsed < 5, "409 after \(elapsed) s")
        #expect(gateway.stop() == 0)
    }

    @Test("Idempotency-Key: replay through another replica without a worker, 422 for another request, per caller")
    func idempotencyKeys() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateways = try await Self.replicas(2, database: database, authentication: .keysOnly)
        let (a, b) = (gateways[0], gateways[1])
        let admin = AuthTests.bearer(try await onThread { try AuthTests.createKey(database, name: "ops", scopes: ["admin:*"]) })
        let other = AuthTests.bearer(
            try await onThread { try AuthTests.createKey(database, name: "other", scopes: ["invoke:*"]) })

        var first = try await Self.post(a, "/v1/register/k/incr", headers: admin.merging(["Idempotency-Key": "\"op-1\""]) { $1 })
        #expect(first.status == 200 && first.text == #"{"n":1}"# && first.headers["idempotent-replayed"] == nil)
        let servedBefore = try await Self.served(b, "register")
        // The same key as a bare token is the same key; b has no worker for it, and starts none.
        var again = try await Self.post(b, "/v1/register/k/incr", headers: admin.merging(["Idempotency-Key": "op-1"]) { $1 })
        #expect(again.status == 200 && again.text == first.text && again.headers["etag"] == first.headers["etag"])
        #expect(again.headers["idempotent-replayed"] == "true")
        #expect(try await Self.served(b, "register") == servedBefore, "a replay ran a worker")
        again = try await Self.post(a, "/v1/register/k/incr", headers: admin.merging(["Idempotency-Key": "op-1"]) { $1 })
        #expect(again.headers["idempotent-replayed"] == "true")

        // Another request under the same key is refused; another caller's key is another key.
        again = try await Self.post(
            a, "/v1/register/k/incr", #"{"x":1}"#, headers: admin.merging(["Idempotency-Key": "op-1"]) { $1 })
        #expect(again.status == 422)
        again = try await Self.post(b, "/v1/register/k/incr", headers: other.merging(["Idempotency-Key": "op-1"]) { $1 })
        #expect(again.status == 200 && again.text == #"{"n":2}"# && again.headers["idempotent-replayed"] == nil)

        // A business error is an answer, and is replayed; a crash is not, and runs again.
        first = try await Self.post(a, "/v1/register/k/refuse", headers: admin.merging(["Idempotency-Key": "op-2"]) { $1 })
        #expect(first.status == 409)
        _ = try await Self.post(a, "/v1/register/k/incr", headers: admin)
        again = try await Self.post(b, "/v1/register/k/refuse", headers: admin.merging(["Idempotency-Key": "op-2"]) { $1 })
        #expect(again.status == 409 && again.text == first.text && again.headers["idempotent-replayed"] == "true")
        #expect(again.headers["content-type"] == "application/problem+json")
        first = try await Self.post(a, "/v1/register/k/crash", headers: admin.merging(["Idempotency-Key": "op-3"]) { $1 })
        #expect(first.status == 502)
        again = try await Self.post(a, "/v1/register/k/crash", headers: admin.merging(["Idempotency-Key": "op-3"]) { $1 })
        #expect(again.status == 502 && again.headers["idempotent-replayed"] == nil)

        // Bad keys are 400.
        for bad in [String(repeating: "k", count: 256), "\"unterminated", "two words", "\"\""] {
            again = try await Self.post(a, "/v1/register/k/incr", headers: admin.merging(["Idempotency-Key": bad]) { $1 })
            #expect(again.status == 400, "Idempotency-Key: \(bad) gave \(again.status)")
        }
        again = try await Self.post(
            a, "/v1/register/k/incr", headers: admin.merging(["Idempotency-Key": String(repeating: "k", count: 255)]) { $1 })
        #expect(again.status == 200)

        let rows = try await Self.sql(database, "SELECT caller, key, status, etag FROM idempotency ORDER BY caller, key")
        #expect(rows.map { $0[0]! + "/" + $0[1]!.prefix(5) + "/" + $0[2]! } == ["ops/kkkkk/200", "ops/op-1/200", "ops/op-2/409", "other/op-1/200"])
        let state = try Self.json(try await Self.get(a, "/v1/register/k", headers: admin))
        #expect(state["state"] == ["n": 4])
        for gateway in gateways { #expect(gateway.stop() == 0) }
    }

    @Test("a repeat while the first is running waits for it, or gets 409 with Retry-After past --idempotency-wait")
    func repeatWhileRunning() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.replicas(1, database: database, arguments: ["--idempotency-wait", "30s"])[0]
        let key = ["Idempotency-Key": "slow-1"]
        async let first = Self.post(gateway, "/v1/register/s/slow", #"{"seconds":6}"#, headers: key)
        try await Self.waitUntilBusy(gateway, "register")
        let repeated = try await Self.post(gateway, "/v1/register/s/slow", #"{"seconds":6}"#, headers: key)
        let original = try await first
        #expect(original.status == 200 && original.text == #"{"n":1}"#)
        #expect(repeated.status == 200 && repeated.text == #"{"n":1}"# && repeated.headers["idempotent-replayed"] == "true")
        #expect(gateway.stop() == 0)

        let impatient = try await Self.replicas(1, database: database, arguments: ["--idempotency-wait", "200ms"])[0]
        async let second = Self.post(impatient, "/v1/register/s/slow", #"{"seconds":6}"#, headers: ["Idempotency-Key": "slow-2"])
        try await Self.waitUntilBusy(impatient, "register")
        let refused = try await Self.post(
            impatient, "/v1/register/s/slow", #"{"seconds":6}"#, headers: ["Idempotency-Key": "slow-2"])
        #expect(refused.status == 409 && refused.headers["retry-after"] != nil)
        #expect(try await second.text == #"{"n":2}"#)
        #expect(impatient.stop() == 0)
    }

    @Test("keys expire after --idempotency-ttl: the sweeper deletes them, and the key is free again")
    func idempotencyExpiry() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.replicas(
            1, database: database, arguments: ["--idempotency-ttl", "10s", "--outbox-lease", "5s"])[0]
        var response = try await Self.post(gateway, "/v1/register/t/incr", headers: ["Idempotency-Key": "t-1"])
        #expect(response.status == 200)
        // 10 s, so that a loaded machine's stall between the answer and this query cannot outlast the record.
        let kept = try await Self.sql(database, "SELECT count(*) FROM idempotency").first?[0]
        #expect(kept == "1")
        let deadline = Date().addingTimeInterval(40)
        var left = "1"
        while left != "0", Date() < deadline {
            try await Task.sleep(for: .milliseconds(200))
            left = try await Self.sql(database, "SELECT count(*) FROM idempotency").first?[0] ?? "?"
        }
        #expect(left == "0", "the expired record was not swept")
        response = try await Self.post(gateway, "/v1/register/t/incr", #"{"other":true}"#, headers: ["Idempotency-Key": "t-1"])
        #expect(response.status == 200 && response.text == #"{"n":2}"#)
        #expect(gateway.stop() == 0)
    }

    @Test("unknown commit outcomes (40003, a connection lost at COMMIT) are read back: with a key nothing is lost or doubled")
    func unknownOutcomes() async throws {
        let database = try await TestDatabase.createDatabase()
        // A short budget, so that some commands run out of it while their commits keep failing: that is a 503
        // (nothing committed, retry), never a 409, because the entity never moved.
        let gateway = try await Self.replicas(1, database: database, arguments: ["--conflict-budget", "300ms"])[0]
        _ = try await Self.post(gateway, "/v1/register/u/incr")
        // At COMMIT, a third of the transactions fail with 40003, and a third lose their connection.
        try await Self.script(
            database,
            """
            CREATE FUNCTION statefn_test_unknown() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE roll float8 := random();
            BEGIN
                IF roll < 0.33 THEN
                    RAISE EXCEPTION 'injected unknown outcome' USING ERRCODE = '40003';
                ELSIF roll < 0.66 THEN
                    PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER statefn_test_unknown_entities AFTER INSERT OR UPDATE ON entities
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION statefn_test_unknown();
            CREATE CONSTRAINT TRIGGER statefn_test_unknown_events AFTER INSERT ON entity_events
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION statefn_test_unknown();
            """)
        var statuses: [Int] = []
        for index in 0..<30 {
            let key = ["Idempotency-Key": "u-\(index)"]
            var response = try await Self.post(gateway, "/v1/register/u/incr", headers: key)
            var tries = 1
            while response.status != 200, tries < 40 {
                statuses.append(response.status)
                #expect(
                    response.text.contains("nothing was committed") || response.text.contains("outcome is unknown"),
                    "\(response.status) \(response.text)")
                response = try await Self.post(gateway, "/v1/register/u/incr", headers: key)
                tries += 1
            }
            #expect(response.status == 200, "\(response.status) \(response.text)")
        }
        #expect(statuses.allSatisfy { $0 == 503 }, "\(statuses)")
        #expect(!statuses.isEmpty, "no command ran out of its budget while its commits failed")
        let rows = try await Self.sql(
            database, "SELECT state::text FROM entities WHERE function = 'register' AND entity_id = 'u'")
        #expect(rows.first?[0] == #"{"n": 31}"#)
        let readBacks = gateway.logs.filter { $0.contains("commit outcome unknown") }
        #expect(readBacks.contains { $0.contains("40003") }, "no 40003 was read back")
        #expect(readBacks.contains { $0.contains("connection_failed") }, "no lost connection was read back")

        // Without a key, an event-only commit whose outcome is unknown says so. (A 503 may also say the database
        // is unavailable: a pool connection the trigger ended, found broken before anything was sent on it.)
        var uncertain = 0
        for _ in 0..<12 {
            let response = try await Self.post(gateway, "/v1/register/u/note")
            if response.status == 503 {
                if response.text.contains("outcome is unknown") { uncertain += 1 }
                #expect(
                    response.text.contains("outcome is unknown") || response.text.contains("database is unavailable"),
                    "\(response.text)")
            } else {
                #expect(response.status == 200)
            }
        }
        #expect(uncertain > 0)
        #expect(gateway.stop() == 0)
    }

    @Test("malformed budgets, cache sizes, TTLs and outbox and feed settings are refused at start-up, by name", arguments: [
        ("--conflict-budget", "soon"), ("--conflict-budget", "2"), ("--cache-bytes", "64MB"), ("--cache-bytes", "-1"),
        ("--idempotency-ttl", "0s"), ("--idempotency-wait", "1.5s"), ("--outbox-poll", "5ms"),
        ("--outbox-max-attempts", "0"), ("--outbox-lease", "500ms"), ("--feed-poll", "2m"),
        ("--max-subscribers", "many"), ("--sse-heartbeat", "1"), ("--idempotency-ttl", "30s"),
    ])
    func badFlags(_ flag: String, _ value: String) async throws {
        let database = try await TestDatabase.createDatabase()
        do {
            _ = try await onThread {
                try GatewayProcess(
                    arguments: ["--functions", Self.fixtures, "\(flag)=\(value)"], environment: ["DATABASE_URL": database])
            }
            Issue.record("statefn started with \(flag) \(value)")
        } catch let error as TestHTTPError {
            #expect(error.description.contains("exited at start-up"), "\(error)")
            #expect(error.description.contains(flag) && error.description.contains(value), "\(error)")
        }
    }

    @Test("shutdown: a command still running when the grace runs out is answered 503 and never commits")
    func graceRunsOut() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.replicas(1, database: database, arguments: ["--grace-period", "1"])[0]
        // Far longer than the grace (1 s), and than a loaded machine takes to bring it to a worker: stopping the
        // gateway kills the worker, so the test does not wait for it.
        async let slow = Self.post(gateway, "/v1/register/g/slow", #"{"seconds":45}"#)
        try await Self.waitUntilBusy(gateway, "register")
        let stopped = try await onThread { gateway.stop() }
        let response = try await slow
        #expect(stopped == 0)
        #expect(response.status == 503, "\(response.status) \(response.text)")
        // The gateway has exited, so nothing of it can commit any more: what the database holds now is final.
        let rows = try await Self.sql(database, "SELECT count(*) FROM entities WHERE entity_id = 'g'")
        #expect(rows.first?[0] == "0", "a 503'd command committed")
    }
}
