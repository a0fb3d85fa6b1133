// `serve`'s configuration on its own: flags over variables over defaults, and every malformed or out-of-range value
// refused with a message that names where it came from.
import Foundation
import Logging
import Testing

import StatefnAuth
import StatefnWorkers
@testable import StatefnCore

@Suite(.timeLimit(.minutes(1))) struct ServeConfigurationTests {
    private func configuration(_ flags: [String: String] = [:], env: [String: String] = [:]) throws
        -> ServeConfiguration
    {
        try ServeConfiguration(ConfigurationSource(flags: flags, environment: env))
    }

    private func refusal(_ flags: [String: String] = [:], env: [String: String] = [:]) -> String? {
        do {
            _ = try configuration(flags, env: env)
            return nil
        } catch {
            return "\(error)"
        }
    }

    /// The database URL from a mounted secret: DATABASE_URL_FILE, trimmed; never both, never an unreadable file.
    @Test func theDatabaseURLMayComeFromAFile() throws {
        let file = NSTemporaryDirectory() + "statefn-url-\(UUID().uuidString)"
        try "postgresql://u:secret@db/statefn\n".write(toFile: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: file) }
        #expect(try configuration(env: ["DATABASE_URL_FILE": file]).database.url == "postgresql://u:secret@db/statefn")
        #expect(refusal(env: ["DATABASE_URL_FILE": file, "DATABASE_URL": "postgresql://x"])?.contains("not both") == true)
        #expect(refusal(env: ["DATABASE_URL_FILE": file + ".missing"])?.contains("cannot be read") == true)
    }

    /// What a worker may read of /etc under Landlock: what runtimes need, not whatever else is kept there.
    @Test func workersReadOnlyTheRuntimesPartOfEtc() throws {
        let etc = WorkerSandbox.systemPaths.filter { $0.hasPrefix("/etc") }
        #expect(!etc.contains("/etc"), "not all of /etc")
        #expect(etc.contains("/etc/ld.so.cache") && etc.contains("/etc/ssl"))
        #expect(!etc.contains { $0.hasPrefix("/etc/statefn") || $0 == "/etc/shadow" || $0.hasPrefix("/etc/postgresql") })
    }

    @Test func defaultsWhenNothingIsSet() throws {
        let config = try configuration()
        #expect(config.listen == (try ListenAddress("127.0.0.1:8080")))
        #expect(config.functionsDirectory == "functions")
        #expect(config.database.poolSize == 16)
        #expect(config.database.dataDirectory == ".statefn")
        #expect(config.database.url == nil)
        #expect(config.maxBodyBytes == 1 << 20)
        #expect(config.httpThreads == 4)
        #expect(config.gracePeriod == .seconds(10))
        #expect(config.commits.conflictBudget == .seconds(2))
        #expect(config.outbox.lease == .seconds(60))
        #expect(config.logLevel == .info)
        #expect(config.logFormat == nil)
        #expect(config.auth.insecureNoAuth == false)
        #expect(config.pollOnly == false)
    }

    @Test func aFlagWinsOverItsVariableAndAnEmptyVariableIsUnset() throws {
        let config = try configuration(
            ["http-threads": "8"],
            env: ["STATEFN_HTTP_THREADS": "2", "STATEFN_DB_POOL_SIZE": "5", "STATEFN_LISTEN": "",
                "DATABASE_URL": "postgresql://root@db:26257/statefn?sslmode=verify-full&options=--cluster%3Dblue"])
        #expect(config.httpThreads == 8)
        #expect(config.database.poolSize == 5)
        #expect(config.listen.port == 8080)
        // Passed through unchanged, for libpq.
        #expect(config.database.url == "postgresql://root@db:26257/statefn?sslmode=verify-full&options=--cluster%3Dblue")
    }

    @Test func malformedNumbersAreRefusedNotDefaulted() {
        #expect(refusal(env: ["STATEFN_HTTP_THREADS": "abc"]) == #"STATEFN_HTTP_THREADS must be a whole number from 1 to 256, got "abc""#)
        #expect(refusal(["db-pool-size": "0"]) == #"--db-pool-size must be a whole number from 1 to 1000, got "0""#)
        #expect(refusal(env: ["STATEFN_MAX_BODY_BYTES": "1MB"])?.hasPrefix("STATEFN_MAX_BODY_BYTES must be") == true)
        #expect(refusal(env: ["STATEFN_CACHE_BYTES": "-1"])?.hasPrefix("STATEFN_CACHE_BYTES must be") == true)
        #expect(refusal(env: ["STATEFN_RATE_BURST": "x"])?.hasPrefix("STATEFN_RATE_BURST must be") == true)
    }

    @Test func durationsNeedAUnitAndStayInRange() throws {
        #expect(refusal(env: ["STATEFN_CONFLICT_BUDGET": "2"])?.contains("with a unit") == true)
        #expect(refusal(["outbox-poll": "5ms"]) == "--outbox-poll must be from 10ms to 1m, got 5ms")
        #expect(refusal(["sse-heartbeat": "1.5s"])?.hasPrefix("--sse-heartbeat must be a whole number") == true)
        #expect(try configuration(["grace-period": "30"]).gracePeriod == .seconds(30))
        #expect(try configuration(env: ["STATEFN_GRACE_PERIOD": "90s"]).gracePeriod == .seconds(90))
        #expect(refusal(["grace-period": "-1"])?.hasPrefix("--grace-period must be") == true)
        #expect(try configuration(["idempotency-ttl": "7d"]).commits.idempotencyTTL == .seconds(7 * 86_400))
    }

    @Test func settingsThatDependOnEachOther() throws {
        #expect(refusal(["idempotency-ttl": "30s", "outbox-lease": "60s"])?.contains("must be longer than --outbox-lease") == true)
        #expect(refusal(["jwks-file": "/k.json", "oidc-issuer": "https://id.example.com"]) == "give at most one of --jwks-file, --jwks-url and --oidc-issuer")
        #expect(refusal(["insecure-no-auth": "1", "listen": "0.0.0.0:8080"])?.hasPrefix("--insecure-no-auth only works on a loopback address") == true)
        #expect(refusal(["rate-limit": "fast"]) == "--rate-limit must look like 100/s or 600/min, got fast")
        #expect(try configuration().auth.authFailureRate == 2)
        #expect(try configuration(env: ["STATEFN_AUTH_FAILURE_LIMIT": "off"]).auth.authFailureRate == nil)
        #expect(try configuration(["auth-failure-limit": "60/min"]).auth.authFailureRate == 1)
        #expect(refusal(["auth-failure-limit": "lots"]) == "--auth-failure-limit must look like 2/s, 60/min or off, got lots")
        #expect(refusal(["rate-burst": "0"]) == #"--rate-burst must be a whole number from 1 to 1000000, got "0""#)
    }

    @Test func switchesAndChoices() throws {
        #expect(try configuration(env: ["STATEFN_POLL_ONLY": "true"]).pollOnly)
        #expect(try configuration(env: ["STATEFN_POLL_ONLY": "0"]).pollOnly == false)
        #expect(refusal(env: ["STATEFN_POLL_ONLY": "sometimes"]) == #"STATEFN_POLL_ONLY must be 1 or 0 (true or false), got "sometimes""#)
        #expect(try configuration(["log-format": "text"]).logFormat == .text)
        #expect(try configuration(env: ["STATEFN_LOG_FORMAT": "auto"]).logFormat == nil)
        #expect(refusal(["log-format": "xml"]) == #"--log-format must be one of json, text, auto, got "xml""#)
        #expect(try configuration(["log-level": "debug"]).logLevel == .debug)
        #expect(refusal(env: ["STATEFN_LOG_LEVEL": "loud"])?.hasPrefix("STATEFN_LOG_LEVEL must be one of trace") == true)
    }

    @Test func listenAddresses() throws {
        #expect(try configuration(["listen": "[::1]:0"]).listen == (try ListenAddress("[::1]:0")))
        #expect(try ListenAddress("[::1]:9").urlHost == "[::1]")
        #expect(refusal(env: ["STATEFN_LISTEN": "8080"]) == "STATEFN_LISTEN must be HOST:PORT, got 8080")
        #expect(refusal(["listen": "localhost:99999"])?.contains("port from 0 to 65535") == true)
    }

    @Test func keySourcesAreHttpsExceptOnLoopback() {
        #expect(JWKSLocation.fetchProblem("https://id.example.com/realms/shop") == nil)
        #expect(JWKSLocation.fetchProblem("http://127.0.0.1:9400") == nil)
        #expect(JWKSLocation.fetchProblem("http://localhost/jwks") == nil)
        #expect(JWKSLocation.fetchProblem("http://[::1]:80/x") == nil)
        #expect(JWKSLocation.fetchProblem("http://keycloak:8080/realms/shop") != nil)
        // A loopback name in the user part or the path does not make the host loopback.
        #expect(JWKSLocation.fetchProblem("http://127.0.0.1@evil.example/x") != nil)
        #expect(JWKSLocation.fetchProblem("http://evil.example/127.0.0.1") != nil)
        // Names that only start like a loopback address are names, resolved anywhere.
        #expect(JWKSLocation.fetchProblem("http://127.0.0.1.attacker.example/jwks") != nil)
        #expect(JWKSLocation.fetchProblem("http://[::1].evil.example/jwks") != nil)
        #expect(JWKSLocation.fetchProblem("http://127.1.2.3:8080/x") == nil)
        #expect(JWKSLocation.fetchProblem("http://LOCALHOST:9/x") == nil)
        #expect(JWKSLocation.fetchProblem("http://[::2]/x") != nil)
        #expect(!ListenAddress.isLoopback("127.0.0.1.nip.io"))
        #expect(refusal(["insecure-no-auth": "1", "listen": "127.0.0.1.nip.io:8080"]) != nil)
        #expect(JWKSLocation.fetchProblem("ftp://id.example.com") != nil)
        #expect(refusal(["oidc-issuer": "http://id.example.com"])?.hasPrefix("--oidc-issuer: must be an https URL") == true)
    }

    @Test func durationsRoundTripThroughTheirSpelling() {
        for text in ["250ms", "2s", "90s", "1m", "12h", "7d"] {
            #expect(DurationText.parse(text).map(DurationText.format) == text)
        }
        #expect(DurationText.parse("2") == nil)
        #expect(DurationText.parse("s") == nil)
        #expect(DurationText.parse("-1s") == nil)
    }
}
