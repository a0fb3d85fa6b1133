// Running statefn the way operators do, through the built binary: a real OIDC provider (oidc-provider-mock, which
// signs without a kid), Prometheus metrics that move under load, the configuration refusing bad values, the log
// formats, and the command line (invoke, functions, migrate --status).
import Foundation
import StatefnJSON
import StatefnTestSupport
import Testing

@Suite("operations, end to end", .serialized, .timeLimit(.minutes(5)))
struct OperationsTests {
    static let functions = GatewayProcess.reachable(GatewayProcess.repositoryRoot + "/functions")

    /// The statefn binary run to its end with exactly `environment` (plus PATH and HOME).
    static func statefn(_ arguments: [String], environment: [String: String] = [:]) throws
        -> (status: Int32, output: String)
    {
        var env = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
        env.merge(environment) { $1 }
        let (status, output, _) = try runToEnd(
            GatewayProcess.binaryPath, arguments, environment: env, mergingErrors: true, timeout: 120)
        return (status, output)
    }

    /// The value of a series in Prometheus's text format, matched by its name and labels as printed.
    static func sample(_ metrics: String, _ series: String) -> Double? {
        for line in metrics.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    /// A URL-encoded form body.
    static func form(_ fields: [(String, String)]) -> String {
        fields.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0.1)" }
            .joined(separator: "&")
    }

    @Test("an ID token from oidc-provider-mock's authorization-code flow, signed without kid, calls a function")
    func realOIDCProvider() async throws {
        let port = try freeLoopbackPort()
        let provider = try PythonTools.start(
            try PythonTools.path("oidc-provider-mock"),
            ["--port", String(port), "--user-claims", #"{"sub":"alice","scope":"invoke:counter/{sub}"}"#])
        // SIGKILL: uvicorn's graceful stop waits for the gateway's kept-alive connection.
        defer {
            kill(provider.processIdentifier, SIGKILL)
            provider.waitUntilExit()
        }
        let issuer = "http://127.0.0.1:\(port)"
        let idp = TestHTTPClient(port: port)
        // Up when discovery answers.
        var discovery: TestHTTPResponse?
        for _ in 0..<200 {
            discovery = try? idp.request("GET", "/.well-known/openid-configuration")
            if discovery?.status == 200 { break }
            idp.disconnect()
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(discovery?.status == 200)

        // The authorization-code flow, as a browser and a client would run it: the user picks "alice" on the
        // provider's form, the redirect carries the code, and the client trades it for tokens.
        let redirect = "http://127.0.0.1:9/callback"
        let query = Self.form([
            ("client_id", "statefn-cli"), ("redirect_uri", redirect), ("response_type", "code"), ("scope", "openid"),
        ])
        let formHeaders = ["Content-Type": "application/x-www-form-urlencoded", "Connection": "close"]
        idp.disconnect()
        let authorized = try idp.request(
            "POST", "/oauth2/authorize?" + query, body: Self.form([("sub", "alice")]), headers: formHeaders)
        #expect(authorized.status == 302)
        let location = try #require(authorized.header("location"))
        let code = try #require(URLComponents(string: location)?.queryItems?.first { $0.name == "code" }?.value)
        idp.disconnect()
        let tokens = try idp.request(
            "POST", "/oauth2/token",
            body: Self.form([
                ("grant_type", "authorization_code"), ("code", code), ("redirect_uri", redirect),
                ("client_id", "statefn-cli"), ("client_secret", "unused"),
            ]), headers: formHeaders)
        #expect(tokens.status == 200)
        let idToken = try #require(try JSONValue.parse(tokens.text, limits: .client)["id_token"]?.stringValue)
        let header = try #require(Data(base64URL: String(idToken.split(separator: ".")[0])))
        #expect(!String(decoding: header, as: UTF8.self).contains("kid"), "the provider signs without kid")

        let gateway = try await onThread {
            try GatewayProcess(
                arguments: ["--functions", Self.functions, "--oidc-issuer", issuer, "--jwt-audience", "statefn-cli"])
        }
        try await onThread {
            let client = TestHTTPClient(port: gateway.port, defaultHeaders: ["Authorization": "Bearer " + idToken])
            let mine = try client.request("POST", "/v1/counter/alice/increment", body: #"{"by":2}"#)
            #expect(mine.status == 200, "\(mine.text)")
            #expect(mine.text == #"{"value":2}"#)
            // Its scope is invoke:counter/{sub}: another entity is refused, and so is another audience's token.
            #expect(try client.request("POST", "/v1/counter/bob/increment", body: "{}").status == 403)
            let tampered = idToken.dropLast(4) + "AAAA"
            let forged = try client.request(
                "POST", "/v1/counter/alice/increment", body: "{}", headers: ["Authorization": "Bearer \(tampered)"])
            #expect(forged.status == 401)
        }
        #expect(gateway.stop() == 0)

        // Plain http is for loopback only: a provider elsewhere must be https.
        let (status, output) = try Self.statefn([
            "serve", "--functions", Self.functions, "--oidc-issuer", "http://id.example.com/realms/shop",
        ])
        #expect(status == 64)
        #expect(output.contains("--oidc-issuer: must be an https URL (plain http is allowed to a loopback host only)"))
    }

    @Test("GET /metrics needs no key and its series move under load; the entity never becomes a label")
    func metricsMoveUnderLoad() async throws {
        let gateway = try await onThread { try GatewayProcess(arguments: ["--functions", Self.functions]) }
        try await onThread {
            let anonymous = TestHTTPClient(port: gateway.port)
            let before = try anonymous.request("GET", "/metrics")
            #expect(before.status == 200)
            #expect(before.header("content-type")?.hasPrefix("text/plain; version=0.0.4") == true)
            let client = gateway.client()
            for index in 0..<40 {
                let reply = try client.request("POST", "/v1/counter/metrics-\(index % 4)/increment", body: #"{"by":1}"#)
                #expect(reply.status == 200)
            }
            #expect(try client.request("POST", "/v1/nosuch-\(UUID().uuidString.prefix(8).lowercased())/x/y", body: "{}").status == 404)
            let replayed = ["Idempotency-Key": "metrics-key"]
            for _ in 0..<2 {
                #expect(try client.request("POST", "/v1/counter/metrics-0/increment", body: "{}", headers: replayed).status == 200)
            }
            let stream = try TestEventStream(port: gateway.port, path: "/v1/counter/metrics-0/events", headers: gateway.authorization.map { (name: $0.key, value: $0.value) })
            defer { stream.close() }

            let text = try anonymous.request("GET", "/metrics").text
            let counted = Self.sample(text, #"statefn_requests_total{function="counter",operation="command",status="200"}"#)
            #expect(counted == 42)
            #expect(Self.sample(text, #"statefn_requests_total{function="unknown",operation="command",status="404"}"#) == 1)
            #expect(Self.sample(text, #"statefn_request_duration_seconds_count{function="counter",operation="command"}"#) == 42)
            #expect(Self.sample(text, #"statefn_worker_duration_seconds_count{function="counter"}"#) == 41)
            #expect((Self.sample(text, "statefn_commit_duration_seconds_count") ?? 0) >= 41)
            #expect(Self.sample(text, #"statefn_idempotency_replays_total{function="counter"}"#) == 1)
            #expect((Self.sample(text, #"statefn_worker_starts_total{function="counter"}"#) ?? 0) >= 1)
            #expect(Self.sample(text, #"statefn_workers{function="counter",state="idle"}"#).map { $0 >= 1 } == true)
            #expect(Self.sample(text, #"statefn_queue_depth{function="counter"}"#) == 0)
            #expect(Self.sample(text, #"statefn_db_connections{state="in_use"}"#) != nil)
            #expect(Self.sample(text, "statefn_db_waiting") == 0)
            #expect(Self.sample(text, #"statefn_outbox_depth{state="pending"}"#) == 0)
            #expect(Self.sample(text, "statefn_outbox_lag_seconds") == 0)
            #expect(Self.sample(text, "statefn_sse_subscribers") == 1)
            #expect(text.contains(#"statefn_request_duration_seconds_bucket{function="counter",operation="command",le="0.0001"}"#))
            // Bounded labels: no entity id, and a made-up function name is "unknown".
            #expect(!text.contains("metrics-1"))
            #expect(!text.contains("nosuch-"))
        }
    }

    @Test("statefn invoke, functions and migrate --status: the reply on stdout, one line and exit 1 on an error")
    func commandLine() async throws {
        let database = try await TestDatabase.createDatabase()
        let (pending, before) = try Self.statefn(["migrate", "--status"], environment: ["DATABASE_URL": database])
        #expect(pending == 1)
        #expect(before.contains("0001_init") && before.contains("pending"))
        #expect(!before.contains("NOTICE"))

        let gateway = try await onThread {
            try GatewayProcess(arguments: ["--functions", Self.functions], environment: ["DATABASE_URL": database])
        }
        let key = try #require(gateway.devKey)
        let env = ["STATEFN_URL": "http://127.0.0.1:\(gateway.port)", "STATEFN_KEY": key]
        var (status, output) = try Self.statefn(["invoke", "counter", "cli", "increment", #"{"by":5}"#], environment: env)
        #expect(status == 0)
        #expect(output == #"{"value":5}"# + "\n")
        (status, output) = try Self.statefn(["invoke", "counter", "cli", "get", "--query"], environment: env)
        #expect(status == 0 && output == #"{"value":5}"# + "\n")
        (status, output) = try Self.statefn(["invoke", "nosuch", "cli", "x"], environment: env)
        #expect(status == 1)
        #expect(output == "404: unknown function nosuch\n")
        (status, output) = try Self.statefn(
            ["invoke", "counter", "cli", "increment", "{}"], environment: ["STATEFN_URL": env["STATEFN_URL"]!, "STATEFN_KEY": "sfn_nope_nope"])
        #expect(status == 1 && output.hasPrefix("401: "))
        (status, output) = try Self.statefn(["invoke", "counter", "cli", "increment", "{oops"], environment: env)
        #expect(status == 1 && output.hasPrefix("the payload is not JSON"))
        (status, output) = try Self.statefn(["invoke", "counter", "cli", "increment"], environment: ["STATEFN_URL": "http://127.0.0.1:1"])
        #expect(status == 1 && output.hasPrefix("cannot reach http://127.0.0.1:1"))

        (status, output) = try Self.statefn(["functions"], environment: env)
        #expect(status == 0)
        let lines = output.split(separator: "\n")
        #expect(lines.first?.hasPrefix("NAME") == true)
        #expect(lines.contains { $0.hasPrefix("counter ") && $0.contains("warm") && $0.contains("yes") })

        // Migrating a migrated database runs CREATE TABLE IF NOT EXISTS, whose NOTICE ("already exists, skipping")
        // must not reach the terminal.
        (status, output) = try Self.statefn(["migrate"], environment: ["DATABASE_URL": database])
        #expect(status == 0)
        #expect(output == "migrations: up to date\n", "\(output)")
        (status, output) = try Self.statefn(["migrate", "--status"], environment: ["DATABASE_URL": database])
        #expect(status == 0)
        #expect(output.hasSuffix("up to date\n"))
        #expect(!output.contains("pending"))
        #expect(gateway.stop() == 0)

        for command in [["invoke"], ["functions"], ["migrate"], ["serve"], ["keys", "create"], []] {
            let (_, help) = try Self.statefn(command + ["--help"])
            #expect(help.contains("Example"), "statefn \(command.joined(separator: " ")) --help has an example")
        }
    }

    @Test("a malformed setting is refused by name, never replaced by its default")
    func badSettingsAreRefused() throws {
        let cases: [([String], [String: String], String)] = [
            ([], ["STATEFN_HTTP_THREADS": "four"], #"STATEFN_HTTP_THREADS must be a whole number from 1 to 256, got "four""#),
            (["--db-pool-size", "0"], [:], #"--db-pool-size must be a whole number from 1 to 1000, got "0""#),
            ([], ["STATEFN_GRACE_PERIOD": "soon"], "STATEFN_GRACE_PERIOD must be a whole number with a unit"),
            ([], ["STATEFN_LOG_FORMAT": "xml"], #"STATEFN_LOG_FORMAT must be one of json, text, auto, got "xml""#),
            ([], ["STATEFN_POLL_ONLY": "maybe"], #"STATEFN_POLL_ONLY must be 1 or 0"#),
        ]
        for (arguments, environment, message) in cases {
            let (status, output) = try Self.statefn(["serve", "--functions", Self.functions] + arguments, environment: environment)
            #expect(status == 64, "\(arguments) \(environment)")
            #expect(output.contains(message), "\(output)")
        }
    }

    @Test("SIGTERM during start-up (the embedded cluster starting) still stops gracefully: exit 0, no cluster left")
    func sigtermDuringStartUp() async throws {
        let dataDirectory = TestDatabase.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dataDirectory) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: GatewayProcess.binaryPath)
        process.arguments = [
            "serve", "--listen", "127.0.0.1:0", "--functions", Self.functions, "--data-dir", dataDirectory, "--dev-key",
        ]
        process.environment = ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "HOME": NSTemporaryDirectory()]
        process.currentDirectoryURL = URL(fileURLWithPath: GatewayProcess.repositoryRoot)
        let log = Pipe()
        process.standardError = log
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Once it says it is creating the cluster (initdb and the first start take a second or more), so the signal
        // lands mid start-up: neither before serve runs at all nor after it listens.
        var output = ""
        while !output.contains("creating a PostgreSQL cluster") {
            let chunk = log.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            output += String(decoding: chunk, as: UTF8.self)
        }
        #expect(!output.contains("statefn listening"))
        kill(process.processIdentifier, SIGTERM)
        output += String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationReason == .exit, "killed by its signal instead of stopping: \(output)")
        #expect(process.terminationStatus == 0, "\(output)")
        #expect(!output.contains("statefn listening") || output.contains("shutting down"))
        #expect(output.contains("stopped embedded PostgreSQL"), "\(output)")
        let cluster = try FileManager.default.contentsOfDirectory(atPath: dataDirectory)
        #expect(cluster.contains("pg"))
        #expect(!FileManager.default.fileExists(atPath: dataDirectory + "/pg/postmaster.pid"), "the cluster was left running")
    }

    @Test("logs: JSON lines through a pipe by default, readable text with --log-format text")
    func logFormats() async throws {
        let json = try await onThread { try GatewayProcess(arguments: ["--functions", Self.functions]) }
        #expect(json.stop() == 0)
        let listening = try #require(json.logs.first { $0.contains("statefn listening") })
        #expect(try JSONValue.parse(listening, limits: .client)["msg"] == .string("statefn listening"))

        let text = try await onThread {
            try GatewayProcess(arguments: ["--functions", Self.functions, "--log-format", "text"])
        }
        let status = try await onThread { try text.client().request("POST", "/v1/counter/logs/increment", body: "{}").status }
        #expect(status == 200)
        #expect(text.stop() == 0)
        let line = try #require(text.logs.first { $0.contains(" request ") && $0.contains("path=/v1/counter/logs/increment") })
        #expect(line.contains(" info ") && line.contains("status=200") && !line.hasPrefix("{"))
        #expect(text.logs.contains { $0.contains("shutting down") })
    }
}

extension Data {
    /// base64url without padding, as JWTs carry it.
    init?(base64URL text: String) {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        self.init(base64Encoded: base64)
    }
}
