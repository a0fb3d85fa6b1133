// Bad input and bad workers: each gets the status DESIGN.md names, the gateway keeps serving, and the entity's
// state is what it was.
import Foundation
import StatefnJSON
import StatefnTestSupport
import Testing

@Suite("failures, end to end", .timeLimit(.minutes(5)))
struct FailureTests {
    static let fixtures = GatewayProcess.repositoryRoot + "/Tests/EndToEndTests/Fixtures/functions"

    /// Python's http.client sends a body straight after its head, with no `Expect`, and reads the answer only
    /// once it has sent everything: the gateway must let it, for a declared length and for a chunked body.
    @Test("Python's http.client gets 413 for a 2 MiB body, with and without chunked encoding")
    func pythonClientsRead413() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await onThread {
            try GatewayProcess(arguments: ["--functions", Self.fixtures], environment: ["DATABASE_URL": database])
        }
        defer { gateway.stop() }
        let script = """
            import http.client, json, sys
            port, key = int(sys.argv[1]), sys.argv[2]
            body = json.dumps("x" * (2 << 20)).encode()
            headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
            statuses = []
            for chunked in (False, True):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                if chunked:
                    pieces = (body[i:i + 65536] for i in range(0, len(body), 65536))
                    connection.request("POST", "/v1/misbehave/p1/increment", pieces, headers, encode_chunked=True)
                else:
                    connection.request("POST", "/v1/misbehave/p1/increment", body, headers)
                response = connection.getresponse()
                statuses.append([response.status, response.getheader("Content-Type"), json.loads(response.read())["status"]])
                connection.close()
            print(json.dumps(statuses))
            """
        let key = gateway.authorization["Authorization"].map { String($0.dropFirst("Bearer ".count)) } ?? ""
        let run = try await onThread { try runToEnd("/usr/bin/python3", ["-c", script, "\(gateway.port)", key]) }
        #expect(run.status == 0, "python3 failed: \(run.errors)")
        #expect(
            run.output.trimmingCharacters(in: .whitespacesAndNewlines)
                == #"[[413, "application/problem+json", 413], [413, "application/problem+json", 413]]"#,
            "\(run.output) \(run.errors)")
        #expect(gateway.logs.contains { $0.contains("reading and dropping it to answer 413") })
    }

    /// The state cache is bounded in bytes (--cache-bytes, 64 MiB by default), not only in entries: 300 states of
    /// 900 KB, written and read back, do not take the gateway's memory with them.
    @Test("300 entities of 900 KB leave the gateway's resident set under 150 MB")
    func largeStatesDoNotPileUpInMemory() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await onThread {
            try GatewayProcess(arguments: ["--functions", Self.fixtures], environment: ["DATABASE_URL": database])
        }
        defer { gateway.stop() }
        func residentMB() throws -> Int {
            let status = try String(contentsOfFile: "/proc/\(gateway.pid)/status", encoding: .utf8)
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) / 1024
        }
        let before = try residentMB()
        let body = #"{"blob":""# + String(repeating: "x", count: 900_000) + #""}"#
        // One client: the same 300 states, without taking both cores from the tests that run beside this one.
        let statuses = try await onThreads(1) { client in
            let http = gateway.client()
            return try (0..<300).flatMap { index -> [Int] in
                let entity = "big-\(client)-\(index)"
                return [
                    try http.request("POST", "/v1/blob/\(entity)/put", body: body).status,
                    try http.request("GET", "/v1/blob/\(entity)/size").status,
                ]
            }
        }.flatMap { $0 }
        #expect(statuses.allSatisfy { $0 == 200 }, "\(Dictionary(grouping: statuses) { $0 }.mapValues(\.count))")
        let after = try residentMB()
        print("gateway resident set: \(before) MB before, \(after) MB after 300 entities of 900 KB")
        #expect(after < 150, "the gateway holds \(after) MB after 300 entities of 900 KB")
    }

    @Test("a function whose workers crash on 2% of calls keeps at least 90% of 1,200 calls at 8 clients succeeding")
    func aTwoPercentCrashRateIsNotAnOutage() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await onThread {
            try GatewayProcess(arguments: ["--functions", Self.fixtures], environment: ["DATABASE_URL": database])
        }
        defer { gateway.stop() }
        let statuses = try await onThreads(8) { client in
            let http = gateway.client()
            return try (0..<150).map { _ in try http.request("POST", "/v1/flaky/e\(client)/hit", body: "{}").status }
        }.flatMap { $0 }
        let counts = Dictionary(grouping: statuses) { $0 }.mapValues(\.count)
        let succeeded = counts[200] ?? 0
        print("2% crash rate at 8 clients: \(counts.sorted { $0.key < $1.key })")
        #expect(statuses.count == 1_200)
        #expect(succeeded >= 1_080, "\(succeeded) of 1,200 succeeded: \(counts)")
        #expect(counts[503] == nil, "the function was declared unhealthy: \(counts)")
        #expect(gateway.logs.contains { $0.contains("worker crashed; replaced at once") })
    }

    @Test("crashing, lying and slow workers, and bad requests, leave the state unchanged")
    func misbehavingWorkersAndBadInput() async throws {
        let database = try await TestDatabase.createDatabase()
        try await onThread {
            let gateway = try GatewayProcess(
                arguments: ["--functions", Self.fixtures], environment: ["DATABASE_URL": database])
            let client = gateway.client()
            func value() throws -> String { try client.request("GET", "/v1/misbehave/e1/get").text }

            let first = try client.request("POST", "/v1/misbehave/e1/increment", body: #"{"by":5}"#)
            #expect(first.status == 200, "\(first.status) \(first.text)")
            #expect(try value() == #"{"value":5}"#)

            let crash = try client.request("POST", "/v1/misbehave/e1/crash", body: "{}")
            #expect(crash.status == 502)
            #expect(crash.headers["content-type"] == "application/problem+json")
            #expect(!crash.text.contains("crashing on purpose"), "worker stderr must not reach the client")
            #expect(try value() == #"{"value":5}"#)

            #expect(try client.request("POST", "/v1/misbehave/e1/garbage", body: "{}").status == 502)
            #expect(try value() == #"{"value":5}"#)

            let pid = try JSONValue.parse(client.request("GET", "/v1/misbehave/e1/pid").text, limits: .client)
            let pgid = Int32(pid["pgid"]?.integerValue ?? 0)
            #expect(pgid > 1)
            let slow = try client.request("POST", "/v1/misbehave/e1/sleep", body: "{}")
            #expect(slow.status == 504)
            // The worker's whole process group, grandchild included, is gone.
            var alive = true
            for _ in 0..<100 where alive {
                alive = kill(-pgid, 0) == 0
                if alive { Thread.sleep(forTimeInterval: 0.05) }
            }
            #expect(!alive, "process group \(pgid) still has members")
            #expect(try value() == #"{"value":5}"#)

            let refused = try client.request("POST", "/v1/misbehave/e1/refuse", body: "{}")
            #expect(refused.status == 409)
            #expect(refused.text.contains("refused on purpose"))

            let change = try client.request("GET", "/v1/misbehave/e1/change")
            #expect(change.status == 500, "a query that changes state is refused")
            #expect(try value() == #"{"value":5}"#)

            // jsonb would store 1e300 as a 301-digit integer that could never be read back: refused, not committed.
            let unstorable = try client.request("POST", "/v1/misbehave/e1/increment", body: #"{"by":1e300}"#)
            #expect(unstorable.status == 502)
            #expect(try value() == #"{"value":5}"#)

            let unknown = try client.request("POST", "/v1/nosuch/e1/increment", body: "{}")
            #expect(unknown.status == 404)

            let broken = try client.request("POST", "/v1/misbehave/e1/increment", body: "{\"by\":\n 1,}")
            #expect(broken.status == 400)
            let problem = try JSONValue.parse(broken.text, limits: .client)
            #expect(problem["detail"]?.stringValue?.contains("line 2") == true, "\(broken.text)")
            #expect(problem["detail"]?.stringValue?.contains("column") == true)
            #expect(problem["request_id"]?.stringValue == broken.headers["x-request-id"])

            // A client that sends a 2 MiB body without Expect: 100-continue, as Python's http.client, Go and Node do,
            // reads its 413: the gateway reads and drops the body before answering.
            let huge = try client.request(
                "POST", "/v1/misbehave/e1/increment", body: "\"" + String(repeating: "x", count: 2 << 20) + "\"")
            #expect(huge.status == 413)
            #expect(try value() == #"{"value":5}"#)

            let tooBig = try client.request("POST", "/v1/misbehave/e1/increment", body: #"{"by":123456789012345678901234567890}"#)
            #expect(tooBig.status == 400)
            #expect(tooBig.text.contains("64"), "\(tooBig.text)")

            let form = try client.request(
                "POST", "/v1/misbehave/e1/increment", body: "by=1", headers: ["Content-Type": "text/plain"])
            #expect(form.status == 415)

            let badName = try client.request("POST", "/v1/Bad%20Name/e1/increment", body: "{}")
            #expect(badName.status == 400)
            let method = try client.request("DELETE", "/v1/misbehave/e1/increment")
            #expect(method.status == 405)
            #expect(method.headers["allow"] != nil)
            #expect(try client.request("GET", "/v1/misbehave/never-written").status == 404)

            #expect(try client.request("POST", "/v1/misbehave/e1/increment", body: #"{"by":1}"#).text == #"{"value":6}"#)
            #expect(try client.request("GET", "/healthz").status == 200)
            #expect(try client.request("GET", "/readyz").status == 200)
            #expect(gateway.stop() == 0)
        }
    }

    @Test("If-Match on a stale version is 412; the request id a client sends comes back")
    func preconditions() async throws {
        let database = try await TestDatabase.createDatabase()
        try await onThread {
            let gateway = try GatewayProcess(
                arguments: ["--functions", Self.fixtures], environment: ["DATABASE_URL": database])
            let client = gateway.client()
            let first = try client.request("POST", "/v1/misbehave/p/increment", body: "{}", headers: ["X-Request-Id": "my-id-1"])
            #expect(first.headers["x-request-id"] == "my-id-1")
            #expect(first.headers["etag"] == "\"1\"")
            let stale = try client.request("POST", "/v1/misbehave/p/increment", body: "{}", headers: ["If-Match": "\"0\""])
            #expect(stale.status == 412)
            let fresh = try client.request("POST", "/v1/misbehave/p/increment", body: "{}", headers: ["If-Match": "\"1\""])
            #expect(fresh.status == 200)
            #expect(fresh.headers["etag"] == "\"2\"")
            #expect(gateway.stop() == 0)
        }
    }
}
