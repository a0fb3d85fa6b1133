// The function pool through the built binary: hot reload under load, the functions listing, a crash loop's 503,
// and a graceful stop with a request in flight.
import Foundation
import StatefnJSON
import StatefnTestSupport
import Synchronization
import Testing

/// A functions directory of the test's own, with deploys done the safe way (write aside, rename into place).
final class FunctionsDirectory: Sendable {
    let path: String
    init() {
        path = NSTemporaryDirectory() + "statefn-e2e-functions-" + UUID().uuidString.prefix(8)
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        chmod(path, 0o755)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }

    func install(_ name: String, _ text: String, mode: Int = 0o755) {
        let aside = path + "/." + name + ".new"
        _ = FileManager.default.createFile(
            atPath: aside, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
        _ = rename(aside, path + "/" + name)
    }

    func remove(_ name: String) { try? FileManager.default.removeItem(atPath: path + "/" + name) }

    /// A stateless echo action that says which version of its code answered.
    static func action(version: Int) -> String {
        """
        #!/usr/bin/env python3
        import json, os, sys, time
        for line in sys.stdin:
            request = json.loads(line)
            payload = request.get("payload") or {}
            if payload.get("sleep_ms"):
                time.sleep(payload["sleep_ms"] / 1000)
            if payload.get("crash"):
                sys.exit(3)
            print(json.dumps({"id": request["id"], "reply": {"version": \(version), "pid": os.getpid()}}), flush=True)
        """
    }
}

/// Polls `condition` on this thread for up to `seconds`.
func waitFor(seconds: Double = 20, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        Thread.sleep(forTimeInterval: 0.05)
    }
    return try condition()
}

@Suite("function pool, end to end", .timeLimit(.minutes(5)))
struct PoolTests {
    @Test("replacing, adding and removing functions under load: the load runs throughout, and every status is counted")
    func hotReloadUnderLoad() async throws {
        let database = try await TestDatabase.createDatabase()
        let functions = FunctionsDirectory()
        functions.install("hot", FunctionsDirectory.action(version: 1))
        functions.install("hot.json", #"{"stateless": true}"#, mode: 0o644)
        functions.install("steady", FunctionsDirectory.action(version: 1))
        functions.install("steady.json", #"{"stateless": true}"#, mode: 0o644)
        let gateway = try await onThread {
            try GatewayProcess(arguments: ["--functions", functions.path], environment: ["DATABASE_URL": database])
        }
        /// What the load may call, and whether `hot` has been removed (then a 404 from it is right).
        struct Targets {
            var names = ["hot", "steady"]
            var hotRemoved = false
        }
        let targets = Mutex(Targets())
        let loadDone = Atomic<Bool>(false)
        // Counts by "function status"; a transport failure (reset, refused, closed) is status 0.
        let results = try await onThreads(7) { index throws -> [String: Int] in
            var client = gateway.client()
            if index > 0 {
                var statuses: [String: Int] = [:]
                var turn = index
                while !loadDone.load(ordering: .acquiring) {
                    let (name, removed) = targets.withLock { ($0.names[turn % $0.names.count], $0.hotRemoved) }
                    turn += 1
                    // Each request takes a while, so some are always in flight while old workers drain.
                    var status = 0
                    do {
                        status = try client.request("POST", "/v1/\(name)/ping", body: #"{"sleep_ms": 30}"#).status
                    } catch {
                        client = gateway.client()
                    }
                    let label = name == "hot" && removed && status == 404 ? "hot 404 after removal" : "\(name) \(status)"
                    statuses[label, default: 0] += 1
                }
                return statuses
            }
            defer { loadDone.store(true, ordering: .releasing) }
            func version(_ name: String) throws -> Int64? {
                let response = try client.request("POST", "/v1/\(name)/ping", body: "{}")
                return try JSONValue.parse(response.text, limits: .client)["version"]?.integerValue
            }
            #expect(try version("hot") == 1)
            Thread.sleep(forTimeInterval: 0.3)
            for next in 2...3 {  // the change
                functions.install("hot", FunctionsDirectory.action(version: next))
                #expect(try waitFor { try version("hot") == Int64(next) }, "version \(next) never answered")
                Thread.sleep(forTimeInterval: 0.3)
            }
            // The add: the load starts calling the new function as soon as it answers.
            functions.install("added", FunctionsDirectory.action(version: 5))
            functions.install("added.json", #"{"stateless": true}"#, mode: 0o644)
            #expect(try waitFor { try version("added") == 5 }, "the added function never answered")
            targets.withLock { $0.names.append("added") }
            Thread.sleep(forTimeInterval: 0.3)
            // The remove: from here on, hot may answer 404 (and nothing else but 200).
            targets.withLock { $0.hotRemoved = true }
            functions.remove("hot")
            functions.remove("hot.json")
            #expect(try waitFor { try client.request("POST", "/v1/hot/ping", body: "{}").status == 404 })
            Thread.sleep(forTimeInterval: 0.3)
            return [:]
        }
        let statuses = results.dropFirst().reduce(into: [String: Int]()) { total, counts in
            total.merge(counts, uniquingKeysWith: +)
        }
        let expected: Set<String> = ["hot 200", "steady 200", "added 200", "hot 404 after removal"]
        #expect(Set(statuses.keys).isSubset(of: expected), "statuses under reload: \(statuses)")
        for label in expected { #expect((statuses[label] ?? 0) > 0, "no \(label) in \(statuses)") }
        #expect(gateway.logs.contains { $0.contains("function changed; old workers drain") })
        #expect(gateway.logs.contains { $0.contains("function added") && $0.contains("added") })
        #expect(gateway.logs.contains { $0.contains("function removed") && $0.contains("hot") })

        try await onThread {
            let client = gateway.client()
            functions.install("fresh", FunctionsDirectory.action(version: 7))
            functions.install("fresh.json", #"{"stateless": true, "min_workers": 1}"#, mode: 0o644)
            #expect(try waitFor { try client.request("POST", "/v1/fresh/ping", body: "{}").status == 200 })
            for name in ["steady", "steady.json", "added", "added.json"] { functions.remove(name) }
            #expect(try waitFor { try client.request("POST", "/v1/added/ping", body: "{}").status == 404 })
            functions.install("broken", FunctionsDirectory.action(version: 1))
            functions.install("broken.json", #"{"max_wrokers": 2}"#, mode: 0o644)
            functions.install("noexec", FunctionsDirectory.action(version: 1), mode: 0o644)

            var listing: JSONValue = nil
            #expect(
                try waitFor {
                    listing = try JSONValue.parse(client.request("GET", "/v1/functions").text, limits: .client)
                    return listing["failed"]?.arrayValue?.count == 2
                })
            let failed = listing["failed"]?.arrayValue ?? []
            #expect(failed.map { $0["name"] } == ["broken", "noexec"])
            #expect(failed.first?["reason"]?.stringValue?.contains("max_wrokers") == true)
            #expect(failed.last?["reason"]?.stringValue?.contains("executable") == true)
            let listed = listing["functions"]?.arrayValue ?? []
            #expect(listed.map { $0["name"] } == ["fresh"])
            let fresh = try #require(listed.first)
            #expect(fresh["mode"] == "warm")
            #expect(fresh["manifest"]?["stateless"] == true)
            #expect(fresh["manifest"]?["min_workers"] == 1)
            #expect(fresh["manifest"]?["memory_mb"] == 512)
            #expect(fresh["healthy"] == true)
            #expect(fresh["queue_depth"] == 0)
            #expect(fresh["cold_starts"]?.integerValue ?? 0 >= 1)
            for key in ["crashes", "timeouts", "recycles"] { #expect(fresh[key] == 0, "\(key)") }
            // The worker started ahead of demand, and any the first request started while it got ready.
            let workers = fresh["workers"]?.arrayValue ?? []
            #expect(!workers.isEmpty)
            #expect(workers.contains { $0["requests_served"]?.integerValue ?? 0 >= 1 })
            for worker in workers {
                #expect(worker["state"] == "idle")
                #expect(worker["rss_bytes"]?.integerValue ?? 0 > 0)
                #expect(worker["pid"]?.integerValue ?? 0 > 1)
                #expect(worker["generation"] == "current")
            }
            // The other functions kept serving through all of it.
            #expect(try client.request("POST", "/v1/fresh/ping", body: "{}").status == 200)
            #expect(gateway.stop() == 0)
        }
    }

    @Test("a crash loop answers 503 with Retry-After until the executable changes")
    func crashLoop() async throws {
        let database = try await TestDatabase.createDatabase()
        let functions = FunctionsDirectory()
        functions.install("flaky", FunctionsDirectory.action(version: 1))
        functions.install("flaky.json", #"{"stateless": true}"#, mode: 0o644)
        try await onThread {
            let gateway = try GatewayProcess(
                arguments: ["--functions", functions.path], environment: ["DATABASE_URL": database])
            let client = gateway.client()
            var statuses: [Int] = []
            var unhealthy: TestHTTPResponse?
            for _ in 0..<10 where unhealthy == nil {
                let response = try client.request("POST", "/v1/flaky/crash", body: #"{"crash": true}"#)
                statuses.append(response.status)
                if response.status == 503 { unhealthy = response }
            }
            #expect(statuses.prefix(5).allSatisfy { $0 == 502 }, "\(statuses)")
            let refused = try #require(unhealthy)
            #expect(Int(refused.headers["retry-after"] ?? "") ?? 0 > 0)
            #expect(refused.headers["content-type"] == "application/problem+json")
            #expect(try client.request("POST", "/v1/flaky/ping", body: "{}").status == 503)
            let listing = try JSONValue.parse(client.request("GET", "/v1/functions").text, limits: .client)
            #expect(listing["functions"]?.arrayValue?.first?["healthy"] == false)
            #expect(listing["functions"]?.arrayValue?.first?["crashes"] == 5)

            functions.install("flaky", FunctionsDirectory.action(version: 2))
            #expect(try waitFor { try client.request("POST", "/v1/flaky/ping", body: "{}").status == 200 })
            #expect(gateway.stop() == 0)
        }
    }

    @Test("SIGTERM lets the request in flight finish, stops the workers and exits 0; workers never see secrets")
    func gracefulStop() async throws {
        let database = try await TestDatabase.createDatabase()
        let functions = FunctionsDirectory()
        functions.install("slow", FunctionsDirectory.action(version: 1))
        functions.install("slow.json", #"{"stateless": true, "min_workers": 2}"#, mode: 0o644)
        functions.install(
            "envdump",
            """
            #!/usr/bin/env python3
            import json, os, sys
            for line in sys.stdin:
                print(json.dumps({"id": json.loads(line)["id"], "reply": dict(os.environ)}), flush=True)
            """)
        functions.install("envdump.json", #"{"stateless": true, "env": {"GREETING": "hi"}}"#, mode: 0o644)
        let gateway = try await onThread {
            try GatewayProcess(
                arguments: ["--functions", functions.path],
                environment: ["DATABASE_URL": database, "STATEFN_LOG_LEVEL": "info", "STATEFN_SECRET_FOR_TEST": "x"])
        }
        let env = try await onThread {
            try JSONValue.parse(gateway.client().request("POST", "/v1/envdump/show", body: "{}").text, limits: .client)
        }
        let names = env.objectValue?.keys ?? []
        #expect(env["GREETING"] == "hi")
        #expect(!names.contains("DATABASE_URL"))
        #expect(!names.contains { $0.hasPrefix("STATEFN_") }, "\(names)")
        #expect(Set(names).isSubset(of: ["GREETING", "PATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE", "PWD"]), "\(names)")

        // Every worker the gateway has, from its own listing and from the process table.
        let listing = try await onThread {
            try JSONValue.parse(gateway.client().request("GET", "/v1/functions").text, limits: .client)
        }
        var workers = Set(
            (listing["functions"]?.arrayValue ?? []).flatMap { $0["workers"]?.arrayValue ?? [] }
                .compactMap { $0["pid"]?.integerValue.map { Int32($0) } })
        #expect(workers.count >= 3, "slow's two and envdump's one: \(workers)")
        #expect(Set(AuthTests.children(of: gateway.pid).compactMap { Int32($0) }).isSuperset(of: workers))

        let results = try await onThreads(4) { index -> (status: Int, pid: Int32, exit: Int32, ready: Int) in
            if index < 3 {
                // Three requests in flight when SIGTERM comes: each must get its answer, none a reset.
                let response = try gateway.client().request("POST", "/v1/slow/ping", body: #"{"sleep_ms": 1500}"#)
                let pid = try JSONValue.parse(response.text, limits: .client)["pid"]?.integerValue ?? 0
                return (response.status, Int32(pid), 0, 0)
            }
            // A connection opened before the stop, to ask for readiness while the gateway drains.
            let watcher = gateway.client()
            #expect(try watcher.request("GET", "/readyz").status == 200)
            // SIGTERM once all three are in their workers.
            let inFlight = try waitFor(seconds: 10) {
                let listing = try JSONValue.parse(watcher.request("GET", "/v1/functions").text, limits: .client)
                let slow = listing["functions"]?.arrayValue?.first { $0["name"] == "slow" }
                return slow?["busy"]?.integerValue == 3
            }
            #expect(inFlight, "the three requests never were in their workers together")
            kill(gateway.pid, SIGTERM)
            // Draining: readiness says 503 to a load balancer still asking on an open connection (new connections
            // are refused by then: the listening socket is closed).
            #expect(waitFor(seconds: 5) { gateway.logs.contains { $0.contains("\"shutting down\"") } })
            let ready = (try? watcher.request("GET", "/readyz").status) ?? -1
            return (0, 0, gateway.stop(), ready)
        }
        for result in results.prefix(3) { #expect(result.status == 200, "a request in flight at SIGTERM failed") }
        #expect(results[3].exit == 0)
        #expect(results[3].ready == 503, "readiness while draining: \(results[3].ready)")
        workers.formUnion(results.prefix(3).map(\.pid))
        for worker in workers {
            #expect(kill(worker, 0) != 0 && errno == ESRCH, "worker \(worker) outlived the gateway")
        }
    }
}
