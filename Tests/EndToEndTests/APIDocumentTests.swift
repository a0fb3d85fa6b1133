// The API description and the deployment files, checked as a user's tools check them: openapi-spec-validator and
// schemathesis against the built binary, and every file in docker/ parsed and validated (kubernetes-validate
// --strict, the Keycloak realm, the Dockerfile's Debian packages).
import Foundation
import StatefnTestSupport
import Testing

@Suite("API document and deployment files", .serialized, .timeLimit(.minutes(10)))
struct APIDocumentTests {
    static let root = GatewayProcess.repositoryRoot

    @Test("GET /openapi.yaml serves docs/openapi.yaml without a key; schemathesis finds nothing over 500+ requests")
    func schemathesisAgainstTheGateway() async throws {
        let gateway = try await onThread {
            try GatewayProcess(arguments: ["--functions", Self.root + "/functions"])
        }
        let served = try await onThread { try TestHTTPClient(port: gateway.port).request("GET", "/openapi.yaml") }
        #expect(served.status == 200)
        #expect(served.header("content-type") == "application/yaml")
        #expect(served.body == Array(try Data(contentsOf: URL(fileURLWithPath: Self.root + "/docs/openapi.yaml"))))

        _ = try PythonTools.path("schemathesis")
        let key = try #require(gateway.devKey)
        let (status, output, _) = try runToEnd(
            Self.root + "/scripts/check-openapi",
            ["--url", "http://127.0.0.1:\(gateway.port)", "--key", key, "--seed", "7", "--min-cases", "500"],
            environment: ProcessInfo.processInfo.environment.merging(["STATEFN_VENV": PythonTools.environment]) { $1 },
            mergingErrors: true, timeout: 480)
        // The summary, for the log of the run.
        print(output.split(separator: "\n").suffix(12).joined(separator: "\n"))
        #expect(status == 0, "\(output)")
        #expect(output.contains("the document is valid and the gateway conforms"))
        #expect(gateway.stop() == 0)
    }

    @Test("every YAML and JSON file in docker/ validates, and the Dockerfile's packages exist in Debian")
    func deploymentFiles() throws {
        _ = try PythonTools.path("kubernetes-validate")
        let (status, output, _) = try runToEnd(
            Self.root + "/scripts/check-deploy", [],
            environment: ProcessInfo.processInfo.environment.merging(["STATEFN_VENV": PythonTools.environment]) { $1 },
            mergingErrors: true, timeout: 300)
        #expect(status == 0, "\(output)")
        #expect(output.contains("all deployment checks passed"))
        #expect(!output.contains("FAIL"))
    }
}
