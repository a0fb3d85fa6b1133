import StatefnJSON
import Testing

@testable import StatefnWorkers

@Suite(.timeLimit(.minutes(1))) struct FunctionManifestTests {
    @Test func emptyManifestHasTheDocumentedDefaults() throws {
        let manifest = try FunctionManifest.parse([:])
        #expect(manifest == FunctionManifest())
        #expect(manifest.mode == .warm)
        #expect(manifest.timeoutMs == 10_000)
        #expect(manifest.minWorkers == 0)
        #expect(manifest.maxWorkers == 4)
        #expect(manifest.idleTimeoutMs == 60_000)
        #expect(manifest.maxRequests == 0)
        #expect(manifest.maxQueue == 256)
        #expect(manifest.queueTimeoutMs == 5_000)
        #expect(manifest.memoryMB == 512)
        #expect(manifest.env.isEmpty)
        #expect(manifest.publicCommands.isEmpty)
        #expect(manifest.maxStateBytes == 1_048_576)
        #expect(manifest.stateless == false)
    }

    @Test func responseCapAndReadyHandshakeFields() throws {
        let defaults = FunctionManifest()
        #expect(defaults.maxResponseBytes == 8 << 20)
        #expect(defaults.initTimeoutMs == 0)
        let manifest = try FunctionManifest.parse(["max_response_bytes": 2048, "init_timeout_ms": 300])
        #expect(manifest.maxResponseBytes == 2048)
        #expect(manifest.initTimeoutMs == 300)
        #expect(throws: WorkerError.self) { try FunctionManifest.parse(["max_response_bytes": 10]) }
        #expect(throws: WorkerError.self) { try FunctionManifest.parse(["init_timeout_ms": -1]) }
        // The listing shows every field, and names env variables without their values.
        var withEnv = FunctionManifest()
        withEnv.env = ["API_TOKEN": "secret"]
        #expect(withEnv.json["env"] == ["API_TOKEN": "<redacted>"])
        #expect(withEnv.json["max_response_bytes"] == 8_388_608)
        #expect(withEnv.json.objectValue?.count == 18)
    }

    @Test func everyFieldIsRead() throws {
        let manifest = try FunctionManifest.parse(
            try JSONValue.parse(
                """
                {"mode":"fork","timeout_ms":250,"min_workers":1,"max_workers":2,"idle_timeout_ms":1000,
                 "max_requests":50,"max_queue":3,"queue_timeout_ms":40,"memory_mb":128,
                 "env":{"TZ":"UTC"},"public":["get","list.all"],"max_state_bytes":4096,"stateless":true}
                """, limits: .client))
        var expected = FunctionManifest()
        expected.mode = .fork
        expected.timeoutMs = 250
        expected.minWorkers = 1
        expected.maxWorkers = 2
        expected.idleTimeoutMs = 1000
        expected.maxRequests = 50
        expected.maxQueue = 3
        expected.queueTimeoutMs = 40
        expected.memoryMB = 128
        expected.env = ["TZ": "UTC"]
        expected.publicCommands = ["get", "list.all"]
        expected.maxStateBytes = 4096
        expected.stateless = true
        #expect(manifest == expected)
    }

    @Test(arguments: [
        (#"{"mode":"lambda"}"#, "field mode"),
        (#"{"timeout_ms":"10"}"#, "field timeout_ms: must be an integer"),
        (#"{"timeout_ms":0}"#, "field timeout_ms: must be between"),
        (#"{"timeout_ms":1.5}"#, "field timeout_ms: must be an integer"),
        (#"{"max_workers":0}"#, "field max_workers"),
        (#"{"min_workers":5,"max_workers":2}"#, "field min_workers: must not exceed max_workers"),
        (#"{"max_queue":-1}"#, "field max_queue"),
        (#"{"env":{"A":1}}"#, "field env: A must be a string"),
        (#"{"env":["A"]}"#, "field env"),
        (#"{"env":{"A=B":"c"}}"#, "field env: invalid variable name"),
        (#"{"public":"get"}"#, "field public"),
        (#"{"public":["bad name"]}"#, "field public"),
        (#"{"stateless":"yes"}"#, "field stateless"),
        (#"{"timeout":1000}"#, "field timeout: unknown field"),
        (#"[]"#, "must be a JSON object"),
    ])
    func invalidManifestsNameTheField(document: String, expected: String) throws {
        let value = try JSONValue.parse(document, limits: .client)
        #expect {
            try FunctionManifest.parse(value)
        } throws: { error in
            guard let error = error as? WorkerError else { return false }
            return error.code == .invalidManifest && error.detail.contains(expected)
        }
    }

    @Test("effect_scopes takes invoke scopes in the grammar the gateway parses, and nothing else")
    func effectScopes() throws {
        let good = ["invoke:account", "invoke:account/*", "invoke:*", "invoke:transfer/t-*", "invoke:a/{sub}", "invoke:a/x y"]
        #expect(try FunctionManifest.parse(["effect_scopes": .array(good.map { .string($0) })]).effectScopes == good)
        #expect(try FunctionManifest.parse([:]).effectScopes == [])
        for bad in ["admin:*", "read:account", "invoke:", "invoke:Account", "invoke:account/", "invoke:acc ount",
            "invoke:a/\u{7}", "invoke:a/" + String(repeating: "x", count: 257), "account"] {
            #expect(throws: WorkerError.self, "\(bad)") { try FunctionManifest.parse(["effect_scopes": [.string(bad)]]) }
        }
        #expect(throws: WorkerError.self) { try FunctionManifest.parse(["effect_scopes": "invoke:*"]) }
        #expect(throws: WorkerError.self) { try FunctionManifest.parse(["state_ttl_ms": -1]) }
    }
}
