// The counter example, driven through the built binary over HTTP: what a new user tries first.
import Foundation
import StatefnJSON
import StatefnTestSupport
import Testing

@Suite("counter, end to end", .timeLimit(.minutes(5)))
struct CounterTests {
    let functions = GatewayProcess.repositoryRoot + "/functions"

    @Test("increments, and the count survives a restart on the embedded database")
    func incrementAndRestart() async throws {
        let dataDir = NSTemporaryDirectory() + "statefn-e2e-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: dataDir) }
        try await onThread { [functions] in
            var gateway: GatewayProcess? = try GatewayProcess(arguments: ["--functions", functions, "--data-dir", dataDir])
            var client = gateway!.client()
            var response = try client.request("POST", "/v1/counter/alice/increment", body: #"{"by":2}"#)
            #expect(response.status == 200)
            #expect(response.text == #"{"value":2}"#)
            #expect(response.headers["etag"] == "\"1\"")
            #expect(response.headers["x-request-id"]?.isEmpty == false)
            response = try client.request("POST", "/v1/counter/alice/increment", body: #"{"by":2}"#)
            #expect(response.text == #"{"value":4}"#)
            // The embedded cluster is a real postmaster, and it really stops with the gateway.
            let pidFile = dataDir + "/pg/postmaster.pid"
            let first = try #require(Self.postmaster(pidFile), "no postmaster.pid under \(dataDir)/pg")
            #expect(isRunning(first))
            #expect(gateway!.stop() == 0)
            gateway = nil
            #expect(!FileManager.default.fileExists(atPath: pidFile), "the cluster did not shut down cleanly")
            #expect(!isRunning(first), "postmaster \(first) outlived the gateway")

            gateway = try GatewayProcess(arguments: ["--functions", functions, "--data-dir", dataDir])
            client = gateway!.client()
            let second = try #require(Self.postmaster(pidFile))
            #expect(second != first && isRunning(second), "the cluster did not start again")
            response = try client.request("GET", "/v1/counter/alice/get")
            #expect(response.status == 200)
            #expect(response.text == #"{"value":4}"#)
            #expect(response.headers["etag"] == "\"2\"")
            response = try client.request("GET", "/v1/counter/alice")
            #expect(try JSONValue.parse(response.text, limits: .client) == ["state": ["value": 4], "version": 2])
            #expect(gateway!.stop() == 0)
        }
    }

    /// The postmaster's pid, from the first line of its pid file.
    static func postmaster(_ pidFile: String) -> pid_t? {
        (try? String(contentsOfFile: pidFile, encoding: .utf8))?.split(separator: "\n").first.flatMap { pid_t($0) }
    }

    @Test("8 clients × 250 increments on one entity count to 2000")
    func concurrentIncrements() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateway = try await onThread { [functions] in
            try GatewayProcess(arguments: ["--functions", functions], environment: ["DATABASE_URL": database])
        }
        let statuses = try await onThreads(8) { _ in
            let client = gateway.client()
            return try (0..<250).map { _ in try client.request("POST", "/v1/counter/hot/increment", body: #"{"by":1}"#).status }
        }
        #expect(statuses.flatMap { $0 }.allSatisfy { $0 == 200 })
        let final = try await onThread { try gateway.client().request("GET", "/v1/counter/hot/get") }
        #expect(final.text == #"{"value":2000}"#)
        #expect(final.headers["etag"] == "\"2000\"")
        #expect(gateway.stop() == 0)
    }

    @Test("two gateways on one database: the count equals the number of 200 answers")
    func twoGateways() async throws {
        let database = try await TestDatabase.createDatabase()
        let gateways = try await onThreads(2) { [functions] _ in
            try GatewayProcess(arguments: ["--functions", functions], environment: ["DATABASE_URL": database])
        }
        let statuses = try await onThreads(8) { index in
            let client = gateways[index % 2].client()
            return try (0..<150).map { _ in try client.request("POST", "/v1/counter/shared/increment", body: "{}").status }
        }.flatMap { $0 }
        #expect(statuses.allSatisfy { $0 == 200 || $0 == 409 }, "statuses: \(Set(statuses))")
        let ok = statuses.filter { $0 == 200 }.count
        #expect(ok > 0)
        for gateway in gateways {
            let final = try await onThread { try gateway.client().request("GET", "/v1/counter/shared/get") }
            #expect(final.text == #"{"value":\#(ok)}"#)
        }
        for gateway in gateways { #expect(gateway.stop() == 0) }
    }
}
