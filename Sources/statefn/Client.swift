// `statefn invoke` and `statefn functions`: a running gateway's API from a terminal, at STATEFN_URL with the key in
// STATEFN_KEY (or, on the machine `make run` runs on, the development key it kept). The reply goes to stdout; an
// error status is one line on stderr and exit status 1.
import ArgumentParser
import Foundation
import StatefnAuth
import StatefnCore
import StatefnJSON

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

struct GatewayOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "The gateway's base URL (env STATEFN_URL; default http://127.0.0.1:8080).", valueName: "url"))
    var url: String?

    @Option(
        help: ArgumentHelp(
            "API key or JWT (env STATEFN_KEY; default, for a gateway on loopback: the development key in"
                + " <data-dir>/dev-key, if there is one).",
            valueName: "key"))
    var key: String?

    @Option(help: ArgumentHelp("Where to look for dev-key (env STATEFN_DATA_DIR; default .statefn).", valueName: "dir"))
    var dataDir: String?

    /// These flags, else STATEFN_URL, STATEFN_KEY and STATEFN_DATA_DIR, as `serve` reads its settings.
    private var settings: SettingsReader {
        SettingsReader(configurationSource(["url": url, "key": key, "data-dir": dataDir]))
    }

    var baseURL: String {
        let base = settings.string("url", default: "http://127.0.0.1:8080")
        return base.hasSuffix("/") ? String(base.dropLast()) : base
    }

    var credential: String? {
        let settings = self.settings
        if let key = settings.optionalString("key") { return key }
        // The local development key goes only to a gateway on this machine.
        guard let host = URLComponents(string: baseURL)?.host, JWKSLocation.isLoopbackHost(host) else { return nil }
        let directory = settings.string("data-dir", default: ".statefn")
        return readFile(directory + "/dev-key")?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// One call; the status, the body, and the headers.
    func call(_ method: String, _ path: String, body: [UInt8]? = nil, headers: [String: String] = [:]) async throws
        -> (status: Int, body: Data)
    {
        guard let url = URL(string: baseURL + path) else {
            throw ClientFailure("not a URL: \(baseURL + path)")
        }
        var request = URLRequest(url: url, timeoutInterval: 60)
        request.httpMethod = method
        if let credential { request.setValue("Bearer \(credential)", forHTTPHeaderField: "Authorization") }
        if let body {
            request.httpBody = Data(body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        do {
            let (data, response) = try await URLSession.shared.data(for: request)
            return ((response as? HTTPURLResponse)?.statusCode ?? 0, data)
        } catch {
            throw ClientFailure("cannot reach \(baseURL): \(error.localizedDescription)")
        }
    }

    /// The body on stdout for a 2xx; otherwise one line, `STATUS: detail`, on stderr and exit status 1.
    static func finish(_ status: Int, _ body: Data) throws {
        guard (200..<300).contains(status) else {
            let problem = try? JSONValue.parse(Array(body), limits: JSONLimits(maxBytes: 1 << 20, maxDepth: 16))
            let detail =
                problem?["detail"]?.stringValue ?? problem?["title"]?.stringValue
                ?? String(decoding: body.prefix(200), as: UTF8.self)
            printError("\(status): \(detail.isEmpty ? HTTPURLResponse.localizedString(forStatusCode: status) : detail)")
            throw ExitCode.failure
        }
        FileHandle.standardOutput.write(body)
        if body.last != UInt8(ascii: "\n") { FileHandle.standardOutput.write(Data("\n".utf8)) }
    }
}

struct ClientFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a client command: a failure to connect is one line and exit status 1, like an error status.
func runClient(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let failure as ClientFailure {
        printError(failure.description)
        throw ExitCode.failure
    }
}

struct Invoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Call a function on a running gateway and print its reply.",
        discussion: """
            POSTs the JSON payload (default {}) to /v1/FUNCTION/ENTITY/COMMAND. With --query it is a GET instead \
            (the worker runs read-only) and the payload's fields become query parameters. With --action there is \
            no ENTITY: POST /v1/FUNCTION/COMMAND. A payload of - is read from standard input.

            Examples:
              statefn invoke counter alice increment '{"by":2}'
              statefn invoke counter alice get --query
              echo '{"sku":"rose","qty":1}' | statefn invoke cart bob add - --idempotency-key o-17
              STATEFN_URL=https://fn.example.com STATEFN_KEY=sfn_… \\
                statefn invoke vote poll-1 cast '{"choice":"tea"}'
            """)

    @Argument(help: "The function.") var function: String
    @Argument(help: "The entity id (with --action: the command).") var entity: String
    @Argument(help: "The command (with --action: the JSON payload).") var command: String?
    @Argument(help: "The JSON payload; default {}; - reads standard input.") var payload: String?

    @Flag(help: "A read-only query: GET, with the payload's fields as query parameters.") var query = false
    @Flag(help: "A stateless action: FUNCTION COMMAND [JSON], no entity.") var action = false
    @Option(help: ArgumentHelp("Sent as Idempotency-Key: a retry with the same key runs once.", valueName: "key"))
    var idempotencyKey: String?
    @Option(help: ArgumentHelp("Sent as If-Match: run only if the entity is at this version.", valueName: "version"))
    var ifMatch: String?

    @OptionGroup var gateway: GatewayOptions

    func validate() throws {
        if action, query { throw ValidationError("--action and --query do not go together") }
        if !action, command == nil { throw ValidationError("give FUNCTION ENTITY COMMAND [JSON]") }
        if action, payload != nil { throw ValidationError("with --action: FUNCTION COMMAND [JSON]") }
    }

    func run() async throws {
        try await runClient {
            let (command, text) = action ? (entity, self.command) : (self.command!, payload)
            let json = text == "-" ? String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self) : text ?? "{}"
            let value: JSONValue
            do {
                value = try JSONValue.parse(json, limits: JSONLimits(maxBytes: 64 << 20, maxDepth: 64))
            } catch {
                throw ClientFailure("the payload is not JSON: \(error)")
            }
            let segments = action ? [function, command] : [function, entity, command]
            var path = "/v1/" + segments.map(Self.encode).joined(separator: "/")
            var headers: [String: String] = [:]
            if let idempotencyKey { headers["Idempotency-Key"] = idempotencyKey }
            if let ifMatch { headers["If-Match"] = ifMatch.hasPrefix("\"") ? ifMatch : "\"\(ifMatch)\"" }
            let (status, body): (Int, Data)
            if query {
                guard let object = value.objectValue else {
                    throw ClientFailure("with --query the payload must be a JSON object of parameters")
                }
                let parameters = object.map { name, field in
                    "\(Self.encode(name))=\(Self.encode(field.stringValue ?? field.encodedString()))"
                }
                if !parameters.isEmpty { path += "?" + parameters.joined(separator: "&") }
                (status, body) = try await gateway.call("GET", path, headers: headers)
            } else {
                (status, body) = try await gateway.call("POST", path, body: value.encoded(), headers: headers)
            }
            try GatewayOptions.finish(status, body)
        }
    }

    /// Percent-encodes everything but RFC 3986's unreserved characters.
    static func encode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }
}

struct Functions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List a running gateway's functions and their worker pools, as a table.",
        discussion: """
            GET /v1/functions, which needs an admin scope. --json prints the document as the gateway sent it.

            Examples:
              statefn functions
              STATEFN_URL=http://10.0.0.7:8080 STATEFN_KEY=sfn_… \\
                statefn functions --json | jq '.functions[].name'
            """)

    @Flag(help: "Print the JSON document instead of a table.") var json = false
    @OptionGroup var gateway: GatewayOptions

    func run() async throws {
        try await runClient {
            let (status, body) = try await gateway.call("GET", "/v1/functions")
            guard !json, (200..<300).contains(status) else { return try GatewayOptions.finish(status, body) }
            let document = try JSONValue.parse(Array(body), limits: JSONLimits(maxBytes: 64 << 20, maxDepth: 64))
            func number(_ value: JSONValue?) -> String { value?.integerValue.map { String($0) } ?? "-" }
            let rows = (document["functions"]?.arrayValue ?? []).map { function -> [String] in
                [
                    function["name"]?.stringValue ?? "?", function["mode"]?.stringValue ?? "?",
                    function["healthy"]?.boolValue == false
                        ? "no (retry in \(number(function["retry_after_s"]))s)" : "yes",
                    number(function["busy"]), number(function["idle"]), number(function["queue_depth"]),
                    number(function["cold_starts"]), number(function["crashes"]), number(function["timeouts"]),
                    number(function["recycles"]),
                ]
            }
            printTable(
                header: ["NAME", "MODE", "HEALTHY", "BUSY", "IDLE", "QUEUED", "STARTS", "CRASHES", "TIMEOUTS", "RECYCLES"],
                rows: rows)
            for failed in document["failed"]?.arrayValue ?? [] {
                print("\(failed["name"]?.stringValue ?? "?"): failed to load: \(failed["reason"]?.stringValue ?? "")")
            }
        }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
