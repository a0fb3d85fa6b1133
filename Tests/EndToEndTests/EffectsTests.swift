// Events, effects, timers and sagas through the built binary (DESIGN.md sections 2 to 4): effects run once, timers
// fire on time and survive replicas killed with SIGKILL, state, events and effects appear together or not at all,
// the event log pages and streams across replicas, listing pages, TTLs expire, dead letters can be retried, and
// the saga example conserves money. Several replicas over one real PostgreSQL.
import Foundation
import StatefnJSON
import StatefnTestSupport
import Testing

// Serialized, and on small database pools: these tests start many replicas, and the other suites share the
// machine and the test cluster's connection slots.
@Suite("events, effects and timers, end to end", .serialized, .timeLimit(.minutes(8)))
struct EffectsTests {
    static let fixtures = GatewayProcess.repositoryRoot + "/Tests/EndToEndTests/Fixtures/functions"
    static let examples = GatewayProcess.repositoryRoot + "/functions"

    static func start(
        _ count: Int, database: String, functions: String = fixtures, arguments: [String] = []
    ) async throws -> [GatewayProcess] {
        try await ExactlyOnceTests.replicas(
            count, database: database, functions: functions,
            arguments: ["--outbox-lease", "3s", "--db-pool-size", "6"] + arguments)
    }

    static func post(_ gateway: GatewayProcess, _ path: String, _ body: String = "{}") async throws -> TestHTTPResponse {
        try await ExactlyOnceTests.post(gateway, path, body)
    }

    static func get(_ gateway: GatewayProcess, _ path: String) async throws -> JSONValue {
        let response = try await ExactlyOnceTests.get(gateway, path)
        #expect(response.status == 200, "GET \(path): \(response.status) \(response.text)")
        return try ExactlyOnceTests.json(response)
    }

    static func sql(_ database: String, _ statement: String) async throws -> [[String?]] {
        try await ExactlyOnceTests.sql(database, statement)
    }

    /// Polls `condition` every 50 ms for up to `seconds`; true once it held.
    static func eventually(_ seconds: Double, _ condition: () async throws -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try await condition() { return true }
            try await Task.sleep(for: .milliseconds(50))
        }
        return try await condition()
    }

    /// How many of `timer`'s entities named `prefix-…` fired once, and how many more than once.
    static func fired(_ database: String, prefix: String) async throws -> (once: Int, more: Int) {
        let rows = try await sql(
            database,
            """
            SELECT count(*) FILTER (WHERE (state->>'fired')::int = 1), count(*) FILTER (WHERE (state->>'fired')::int > 1)
            FROM entities WHERE function = 'timer' AND entity_id LIKE '\(prefix)-%'
            """)
        return (Int(rows.first?[0] ?? "") ?? -1, Int(rows.first?[1] ?? "") ?? -1)
    }

    static func pending(_ database: String) async throws -> Int {
        Int(try await sql(database, "SELECT count(*) FROM outbox WHERE dead_at IS NULL").first?[0] ?? "") ?? -1
    }

    /// The `at` of an entity's events of `type`, as Dates.
    static func eventTimes(_ gateway: GatewayProcess, _ path: String, type: String) async throws -> [Date] {
        let page = try await get(gateway, path + "/events?limit=1000")
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return (page["events"]?.arrayValue ?? []).compactMap { entry in
            guard entry["event"]?["type"]?.stringValue == type, let at = entry["at"]?.stringValue else { return nil }
            return formatter.date(from: at)
        }
    }

    @Test(
        "an effect runs once, as its source's principal; a timer fires on time and never early; with NOTIFY and by polling alone",
        arguments: [false, true])
    func effectsAndTimers(pollOnly: Bool) async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.start(1, database: database, arguments: pollOnly ? ["--poll-only"] : [])[0]
        var response = try await Self.post(gateway, "/v1/timer/now/arm", #"{"count":1}"#)
        #expect(response.status == 200, "\(response.text)")
        #expect(try await Self.eventually(2) { try await Self.fired(database, prefix: "now") == (1, 0) })
        let target = try await Self.get(gateway, "/v1/timer/now-0/events")
        #expect(target["events"]?.arrayValue?.first?["event"]?["principal"] == "fn:timer/now")

        // Early or late is judged by the database's clock: the arming commit's time against each firing's.
        response = try await Self.post(gateway, "/v1/timer/later/arm", #"{"count":3,"delay_ms":1500}"#)
        #expect(response.status == 200)
        #expect(try await Self.eventually(5) { try await Self.fired(database, prefix: "later") == (3, 0) })
        let armed = try await Self.eventTimes(gateway, "/v1/timer/later", type: "armed")
        for index in 0..<3 {
            let fired = try await Self.eventTimes(gateway, "/v1/timer/later-\(index)", type: "fired")
            #expect(fired.count == 1)
            if let armedAt = armed.first, let firedAt = fired.first {
                let lateness = firedAt.timeIntervalSince(armedAt) - 1.5
                // Within 1 s under normal load (bench/effects measures it); the suite shares two cores with others.
                #expect(lateness >= 0 && lateness < 3, "timer \(index) fired \(lateness) s after its time")
            }
        }
        try await Task.sleep(for: .milliseconds(500))
        #expect(try await Self.fired(database, prefix: "later") == (3, 0), "a timer fired twice")
        #expect(try await Self.eventually(5) { try await Self.pending(database) == 0 })
        #expect(gateway.stop() == 0)
    }

    @Test("timers set before every replica is killed (SIGKILL) fire once after a replica restarts, not early")
    func timersSurviveEveryReplica() async throws {
        let database = try await TestDatabase.createDatabase()
        let replicas = try await Self.start(2, database: database)
        // Taken before the request, so that the arming commit is later still: a loaded machine may hand the reply
        // over long after the commit, and a clock read then would make a timer on time look early.
        let armedAt = Date()
        let response = try await Self.post(replicas[0], "/v1/timer/survivor/arm", #"{"count":20,"delay_ms":2500}"#)
        #expect(response.status == 200)
        for replica in replicas { _ = replica.stop(signal: SIGKILL) }
        let restarted = try await Self.start(1, database: database)[0]
        #expect(try await Self.eventually(12) { try await Self.fired(database, prefix: "survivor") == (20, 0) })
        let fired = try await Self.eventTimes(restarted, "/v1/timer/survivor-0", type: "fired")
        let armed = try await Self.eventTimes(restarted, "/v1/timer/survivor", type: "armed")
        #expect(fired.count == 1 && armed.count == 1)
        if let firedAt = fired.first, let armedAt = armed.first {
            #expect(firedAt.timeIntervalSince(armedAt) >= 2.5, "a timer fired early, by the database's clock")
        }
        #expect(Date().timeIntervalSince(armedAt) >= 2.5)
        #expect(try await Self.eventually(5) { try await Self.pending(database) == 0 })
        #expect(restarted.stop() == 0)
    }

    @Test("1,000 timers due in the same second take effect exactly once while one of two replicas is killed")
    func thousandTimersThroughAKill() async throws {
        let database = try await TestDatabase.createDatabase()
        let replicas = try await Self.start(2, database: database)
        let response = try await Self.post(replicas[0], "/v1/timer/burst/arm", #"{"count":1000,"delay_ms":1500}"#)
        #expect(response.status == 200, "\(response.text)")
        // Killed while both replicas are in the middle of the burst: its claims come back after the lease (3 s).
        #expect(try await Self.eventually(10) { try await Self.fired(database, prefix: "burst").once >= 100 })
        // The replica about to die was taking part: its request log names effects it ran.
        #expect(replicas[0].logs.contains { $0.contains("\"effect-") }, "the killed replica dispatched nothing")
        _ = replicas[0].stop(signal: SIGKILL)
        #expect(try await Self.eventually(30) { try await Self.fired(database, prefix: "burst") == (1000, 0) })
        #expect(try await Self.eventually(5) { try await Self.pending(database) == 0 })
        #expect(try await Self.fired(database, prefix: "burst") == (1000, 0))
        #expect(replicas[1].stop() == 0)
    }

    @Test("state, events and effects commit together or not at all, through a SIGKILL mid-stream")
    func allOrNothingThroughAKill() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.start(1, database: database)[0]
        var killer: Task<Void, any Error>?
        var acknowledged: [Int] = []
        for index in 0..<400 {
            // Killed while commands are coming, once some have been answered: at a random moment of a request.
            if index == 50 {
                killer = Task {
                    try await Task.sleep(for: .milliseconds(Int.random(in: 5...60)))
                    _ = gateway.stop(signal: SIGKILL)
                }
            }
            guard let response = try? await Self.post(gateway, "/v1/timer/atom\(index)/arm", #"{"count":1}"#) else {
                break
            }
            if response.status == 200 { acknowledged.append(index) }
        }
        _ = try await killer?.value
        #expect(!acknowledged.isEmpty && acknowledged.count < 400, "the kill landed outside the run")
        let restarted = try await Self.start(1, database: database)[0]
        #expect(try await Self.eventually(15) { try await Self.pending(database) == 0 })
        let rows = try await Self.sql(
            database,
            """
            SELECT e.entity_id, (e.state->>'armed')::int,
                (SELECT count(*) FROM entity_events v WHERE v.function = 'timer' AND v.entity_id = e.entity_id),
                (SELECT (t.state->>'fired')::int FROM entities t WHERE t.function = 'timer'
                    AND t.entity_id = e.entity_id || '-0')
            FROM entities e WHERE e.function = 'timer' AND e.entity_id LIKE 'atom%' AND e.entity_id NOT LIKE '%-0'
            """)
        // Nothing of a command without the rest: no event, no effect and no fired target whose state is missing.
        let orphans = try await Self.sql(
            database,
            """
            SELECT (SELECT count(*) FROM entity_events v WHERE v.function = 'timer' AND v.entity_id LIKE 'atom%'
                    AND v.entity_id NOT LIKE '%-0' AND NOT EXISTS (SELECT 1 FROM entities e
                    WHERE e.function = 'timer' AND e.entity_id = v.entity_id)),
                (SELECT count(*) FROM entities t WHERE t.function = 'timer' AND t.entity_id LIKE 'atom%-0'
                    AND NOT EXISTS (SELECT 1 FROM entities e WHERE e.function = 'timer'
                    AND e.entity_id || '-0' = t.entity_id)),
                (SELECT count(*) FROM outbox)
            """)
        #expect(orphans.first == ["0", "0", "0"], "orphans: \(orphans)")
        let committed = Set(rows.map { $0[0] ?? "" })
        for index in acknowledged { #expect(committed.contains("atom\(index)"), "acknowledged atom\(index) was lost") }
        for row in rows {
            #expect(row[1] == "1" && row[2] == "1" && row[3] == "1", "\(row): state, event and effect disagree")
        }
        #expect(restarted.stop() == 0)
    }

    @Test("a refused effect is dead-lettered at once, listed, and runs once it is retried")
    func deadLetters() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.start(1, database: database)[0]
        #expect(try await Self.post(gateway, "/v1/timer/g/arm", #"{"count":1,"command":"guarded"}"#).status == 200)
        #expect(try await Self.post(gateway, "/v1/timer/b/arm", #"{"count":1,"command":"boom"}"#).status == 200)
        #expect(
            try await Self.post(gateway, "/v1/timer/x/arm", #"{"count":1,"function":"register"}"#).status == 200)
        #expect(try await Self.post(gateway, "/v1/timer/c/arm", #"{"count":1,"command":"conflicted"}"#).status == 200)
        var dead: [JSONValue] = []
        #expect(
            try await Self.eventually(5) {
                dead = try await Self.get(gateway, "/v1/outbox?state=dead")["effects"]?.arrayValue ?? []
                return dead.count == 4
            })
        // The function's own 409 is a refusal like any other: dead at once, not retried twenty times.
        #expect(dead.first { $0["entity"] == "c-0" }?["attempts"] == 1)
        let guarded = dead.first { $0["entity"] == "g-0" }
        #expect(guarded?["command"] == "guarded" && guarded?["attempts"] == 1)
        #expect(guarded?["source_function"] == "timer" && guarded?["source_entity"] == "g")
        #expect(guarded?["last_error"]?.stringValue?.contains("not ready") == true, "\(String(describing: guarded))")
        #expect(dead.first { $0["entity"] == "b-0" }?["last_error"]?.stringValue?.contains("400") == true)
        #expect(
            dead.first { $0["function"] == "register" }?["last_error"]?.stringValue?.contains("403") == true,
            "an effect outside the source's effect_scopes must be refused")
        #expect(try await Self.get(gateway, "/v1/outbox?state=pending")["effects"] == [])

        #expect(try await Self.post(gateway, "/v1/timer/g-0/ready").status == 200)
        let id = guarded?["id"]?.stringValue ?? ""
        let retried = try await Self.post(gateway, "/v1/outbox/\(id)/retry", "")
        #expect(retried.status == 200, "\(retried.text)")
        #expect(try await Self.eventually(3) { try await Self.fired(database, prefix: "g") == (1, 0) })
        // The row goes once its batch is settled, a moment after the effect's commit: until then it is pending (409).
        #expect(try await Self.eventually(3) { try await Self.post(gateway, "/v1/outbox/\(id)/retry", "").status == 404 })
        #expect(try await Self.post(gateway, "/v1/outbox/not-a-uuid/retry", "").status == 400)
        // A retry of a row that is still refused runs it again (its stored refusal went with the retry), and it dies
        // again: one more attempt, not a replay.
        let boomID = dead.first { $0["entity"] == "b-0" }?["id"]?.stringValue ?? ""
        #expect(try await Self.post(gateway, "/v1/outbox/\(boomID)/retry", "").status == 200)
        #expect(
            try await Self.eventually(5) {
                let rows = try await Self.get(gateway, "/v1/outbox?state=dead")["effects"]?.arrayValue ?? []
                return rows.contains { $0["id"]?.stringValue == boomID && $0["attempts"] == 1 }
            })
        // Only admin sees and retries the outbox, and deletes; no credential may pass as a function's effect.
        let reader = try AuthTests.createKey(database, name: "reader", scopes: ["read:*", "invoke:*"])
        let impostor = try AuthTests.createKey(database, name: "fn:timer/g", scopes: ["admin:*"])
        for (key, status) in [(reader, 403), (impostor, 401)] {
            let client = TestHTTPClient(port: gateway.port, defaultHeaders: ["Authorization": "Bearer " + key])
            #expect(try client.request("GET", "/v1/outbox").status == status)
            #expect(try client.request("POST", "/v1/outbox/\(boomID)/retry").status == status)
            #expect(try client.request("DELETE", "/v1/timer/g-0").status == status)
        }
        #expect(try await ExactlyOnceTests.get(gateway, "/v1/outbox?state=bogus").status == 400)
        let anonymous = try await onThread { try TestHTTPClient(port: gateway.port).request("GET", "/v1/outbox") }
        #expect(anonymous.status == 401)
        #expect(gateway.stop() == 0)
    }

    @Test(
        "the event log pages, and streams across replicas with Last-Event-ID resume and no duplicates, by NOTIFY and by polling alone (as on CockroachDB)",
        arguments: [false, true])
    func eventStreams(pollOnly: Bool) async throws {
        let database = try await TestDatabase.createDatabase()
        let replicas = try await Self.start(
            2, database: database,
            arguments: ["--max-subscribers", "2", "--feed-poll", "200ms"] + (pollOnly ? ["--poll-only"] : []))
        if pollOnly { #expect(replicas[1].logs.contains { $0.contains("poll alone") }) }
        let (writer, reader) = (replicas[0], replicas[1])
        let auth = [(name: "Authorization", value: "Bearer " + (reader.devKey ?? ""))]
        let stream = try TestEventStream(port: reader.port, path: "/v1/timer/s/events", headers: auth)
        #expect(stream.response.status == 200)
        #expect(stream.response.header("content-type") == "text/event-stream")
        #expect(stream.response.header("x-accel-buffering") == "no")

        let sent = Date()
        #expect(try await Self.post(writer, "/v1/timer/s/emit", #"{"n":3}"#).status == 200)
        var received: [TestEvent] = []
        for _ in 0..<3 { if let event = try stream.next() { received.append(event) } }
        let delay = Date().timeIntervalSince(sent)
        #expect(received.map(\.id) == ["1", "2", "3"])
        #expect(received.allSatisfy { $0.event == "tick" })
        #expect(delay < 1, "across replicas an event took \(delay) s")
        let data = try JSONValue.parse(received[0].data, limits: .client)
        #expect(data["seq"] == 1 && data["event"]?["i"] == 1 && data["at"]?.stringValue?.hasSuffix("Z") == true)
        stream.close()

        #expect(try await Self.post(writer, "/v1/timer/s/emit", #"{"n":2}"#).status == 200)
        let resumed = try TestEventStream(
            port: reader.port, path: "/v1/timer/s/events", headers: auth + [(name: "Last-Event-ID", value: "3")])
        var more: [String?] = []
        for _ in 0..<2 { more.append(try resumed.next()?.id) }
        #expect(more == ["4", "5"])
        #expect(try await Self.post(writer, "/v1/timer/s/emit", #"{"n":1}"#).status == 200)
        #expect(try resumed.next()?.id == "6", "a live event after the resume")

        // The bound: two subscribers on the writer, which had none; a third gets 503 with Retry-After.
        let writerAuth = [(name: "Authorization", value: "Bearer " + (writer.devKey ?? ""))]
        let bounded = try (0..<3).map { _ in
            try TestEventStream(port: writer.port, path: "/v1/timer/other/events", headers: writerAuth)
        }
        #expect(bounded.map(\.response.status) == [200, 200, 503])
        #expect(bounded[2].response.header("retry-after") != nil)

        let page = try await Self.get(writer, "/v1/timer/s/events?after=1&limit=2")
        #expect(page["events"]?.arrayValue?.map { $0["seq"] } == [2, 3])
        #expect(page["last_seq"] == 3)
        #expect(try await ExactlyOnceTests.get(writer, "/v1/timer/s/events?after=-1").status == 400)
        #expect(try await ExactlyOnceTests.get(writer, "/v1/timer/s/events?limit=1001").status == 400)

        // Draining ends every stream cleanly (the last chunk), so clients reconnect elsewhere.
        #expect(reader.stop() == 0)
        #expect(try resumed.next() == nil)
        #expect(writer.stop() == 0)
    }

    @Test("listing pages by id's bytes, with a prefix; DELETE honours If-Match and keeps the event log")
    func listingAndDelete() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.start(1, database: database)[0]
        let ids = (0..<25).map { String(format: "item-%02d", $0) } + ["item-Z", "item-a", "item-é", "other"]
        for id in ids {
            let path = "/v1/timer/" + (id.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? id) + "/ready"
            #expect(try await Self.post(gateway, path).status == 200)
        }
        var seen: [String] = []
        var after = ""
        for _ in 0..<10 {
            let page = try await Self.get(gateway, "/v1/timer?prefix=item-&limit=10&after=" + after)
            seen += (page["entities"]?.arrayValue ?? []).compactMap { $0["id"]?.stringValue }
            guard let next = page["next"]?.stringValue else { break }
            after = next.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? next
        }
        let expected = ids.filter { $0.hasPrefix("item-") }.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        #expect(seen == expected)
        let first = try await Self.get(gateway, "/v1/timer?limit=1")["entities"]?.arrayValue?.first
        #expect(first?["version"] == 1 && first?["updated_at"]?.stringValue?.hasSuffix("Z") == true)

        _ = try await Self.post(gateway, "/v1/timer/item-00/emit", #"{"n":2}"#)
        let stale = try await onThread {
            try gateway.client().request("DELETE", "/v1/timer/item-00", headers: ["If-Match": "\"1\""])
        }
        #expect(stale.status == 412)
        let deleted = try await onThread {
            try gateway.client().request("DELETE", "/v1/timer/item-00", headers: ["If-Match": "\"2\""])
        }
        #expect(deleted.status == 200 && deleted.header("etag") == "\"3\"", "\(deleted.status) \(deleted.text)")
        #expect(try await ExactlyOnceTests.get(gateway, "/v1/timer/item-00").status == 404)
        let again = try await onThread { try gateway.client().request("DELETE", "/v1/timer/item-00") }
        #expect(again.status == 404)
        #expect(try await Self.get(gateway, "/v1/timer/item-00/events")["events"]?.arrayValue?.count == 2)
        let listed = try await Self.get(gateway, "/v1/timer?prefix=item-0&limit=100")["entities"]?.arrayValue ?? []
        #expect(!listed.contains { $0["id"] == "item-00" }, "a deleted entity is not listed")
        #expect(gateway.stop() == 0)
    }

    @Test("state_ttl_ms and events_ttl_ms expire entities and old events; seqs keep going up")
    func timeToLive() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await Self.start(1, database: database)[0]
        #expect(try await Self.post(gateway, "/v1/ephemeral/e/emit", #"{"n":3}"#).status == 200)
        #expect(try await Self.post(gateway, "/v1/timer/kept/emit", #"{"n":1}"#).status == 200)
        #expect(
            try await Self.eventually(8) {
                try await ExactlyOnceTests.get(gateway, "/v1/ephemeral/e").status == 404
            }, "the entity did not expire")
        #expect(
            try await Self.eventually(8) {
                try await Self.get(gateway, "/v1/ephemeral/e/events")["events"]?.arrayValue?.map { $0["seq"] } == [3]
            }, "old events did not expire, or the newest went too")
        #expect(try await ExactlyOnceTests.get(gateway, "/v1/timer/kept").status == 200, "no TTL, no expiry")
        #expect(try await Self.post(gateway, "/v1/ephemeral/e/emit", #"{"n":1}"#).status == 200)
        #expect(try await Self.get(gateway, "/v1/ephemeral/e/events?after=3")["events"]?.arrayValue?.map { $0["seq"] } == [4])
        #expect(gateway.stop() == 0)
    }

    @Test("the saga: 200 concurrent transfers among 10 accounts, one closed part-way, conserve money and all end")
    func saga() async throws {
        let database = try await TestDatabase.createDatabase()
        let replicas = try await Self.start(2, database: database, functions: Self.examples)
        for index in 0..<10 {
            #expect(try await Self.post(replicas[0], "/v1/account/acct\(index)/open", #"{"balance":1000}"#).status == 200)
        }
        let results = try await onThreads(8) { worker -> [Int] in
            var generator = SystemRandomNumberGenerator()
            var statuses: [Int] = []
            for step in 0..<25 {
                let number = worker * 25 + step
                let from = Int.random(in: 0..<10, using: &generator)
                let to = (from + Int.random(in: 1..<10, using: &generator)) % 10
                let body = #"{"from":"acct\#(from)","to":"acct\#(to)","amount":\#(Int.random(in: 1...400, using: &generator))}"#
                let client = replicas[number % 2].client()
                statuses.append(try client.request("POST", "/v1/transfer/t\(number)/start", body: body).status)
                if worker == 0, step == 12 {
                    statuses.append(try client.request("POST", "/v1/account/acct3/close", body: "{}").status)
                }
            }
            return statuses
        }
        #expect(results.joined().allSatisfy { $0 == 200 }, "\(results)")
        let ended: Set<String> = ["completed", "rejected", "compensated"]
        #expect(
            try await Self.eventually(60) {
                let rows = try await Self.sql(
                    database, "SELECT state->>'status' FROM entities WHERE function = 'transfer'")
                return rows.count == 200 && rows.allSatisfy { ended.contains($0[0] ?? "") }
            }, "not every transfer ended")
        let total = try await Self.sql(
            database, "SELECT sum((state->>'balance')::bigint) FROM entities WHERE function = 'account'")
        #expect(total.first?[0] == "10000", "money was made or lost: \(total)")
        let outcomes = try await Self.sql(
            database, "SELECT state->>'status', count(*) FROM entities WHERE function = 'transfer' GROUP BY 1")
        #expect(try await Self.get(replicas[0], "/v1/outbox?state=dead")["effects"] == [])
        #expect(try await Self.eventually(5) { try await Self.pending(database) == 0 })
        print("saga outcomes: \(outcomes.map { "\($0[0] ?? "?")=\($0[1] ?? "?")" }.joined(separator: " "))")
        for replica in replicas { #expect(replica.stop() == 0) }
    }
}
