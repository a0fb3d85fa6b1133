// The front door over real HTTP on 127.0.0.1: parsing, request ids, body limits, suspend/resume under load,
// clients that go away, and shutdown with requests in flight. The clients are StatefnTestSupport's strict ones, so a
// send that fails or a reset is a failure here, as it is for Python's http.client, Go and Node.
import Foundation
import Logging
import StatefnTestSupport
import Testing

@testable import StatefnHTTP

/// Seconds a test's socket waits for progress before it fails as `.timedOut`: well inside the suites' time limits.
let socketTimeout = 20.0

/// Starts a server on a free port, runs `body`, checks that every request was released, and stops the server.
func withServer<T>(
    maxBodyBytes: Int = 1 << 20, connectionTimeoutSeconds: Int = 60, headerTimeoutSeconds: Int = 30,
    maxConnectionsPerAddress: Int = 256, executor: (any TaskExecutor)? = nil,
    handler: @escaping HTTPHandler = echo, _ body: (HTTPServer) async throws -> T
) async throws -> T {
    let server = HTTPServer(
        configuration: HTTPServerConfiguration(
            host: "127.0.0.1", port: 0, threads: 2, maxBodyBytes: maxBodyBytes,
            connectionTimeoutSeconds: connectionTimeoutSeconds, headerTimeoutSeconds: headerTimeoutSeconds,
            maxConnectionsPerAddress: maxConnectionsPerAddress),
        logger: Logger(label: "test"), executor: executor, handler: handler)
    try server.start()
    do {
        let result = try await body(server)
        #expect(await settles { server.core.activeRequests.load(ordering: .relaxed) == 0 })
        await server.stop(gracePeriod: .seconds(10))
        return result
    } catch {
        await server.stop(gracePeriod: .seconds(10))
        throw error
    }
}

/// Polls `condition` for up to 30 seconds.
func settles(_ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(30)
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
}

/// A new connection to the server under test, for tests that need control over the bytes.
func openConnection(_ port: Int) throws -> TestHTTPConnection {
    try TestHTTPConnection(port: port, timeout: socketTimeout)
}

/// A client as a user's would be: whole requests, no retry, no read after a failed send.
func newClient(_ port: Int) -> TestHTTPClient {
    let client = TestHTTPClient(port: port)
    client.timeout = socketTimeout
    return client
}

/// One request on a new connection, from a thread of its own.
func fetch(
    port: Int, _ method: String, _ path: String, headers: [String: String] = [:], body: String? = nil
) async throws -> TestHTTPResponse {
    try await onThread { try newClient(port).request(method, path, body: body, headers: headers) }
}

/// What every client must read for a body over `limit`: a 413 problem that names the limit and the request.
func expectBodyTooLarge(
    _ response: TestHTTPResponse, requestID: String, limit: Int = 1 << 20,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(response.status == 413, sourceLocation: sourceLocation)
    #expect(response.header("Content-Type") == "application/problem+json", sourceLocation: sourceLocation)
    #expect(response.header("X-Request-Id") == requestID, sourceLocation: sourceLocation)
    #expect(
        response.text
            == #"{"type":"about:blank","title":"Content Too Large","status":413,"detail":"The request body is larger than the limit of \#(limit) bytes.","request_id":"\#(requestID)"}"#,
        sourceLocation: sourceLocation)
}

/// Answers with what it saw, in headers, and the body as it came.
@Sendable func echo(_ request: HTTPRequest) async -> HTTPResponse {
    HTTPResponse(
        status: 200,
        headers: [
            (name: "X-Method", value: request.method), (name: "X-Path", value: request.path),
            (name: "X-Query", value: "?" + request.query.map { "\($0.name)=\($0.value)" }.joined(separator: "&")),
            (name: "X-Custom", value: request.headers["x-CUSTOM"] ?? "-"),
            (name: "X-Seen-Request-Id", value: request.requestID),
            (name: "Content-Type", value: "text/plain"),
        ],
        body: request.body)
}

@Suite(.timeLimit(.minutes(2)))
struct HTTPServerTests {
    @Test func getEchoesMethodPathQueryAndHeaders() async throws {
        try await withServer { server in
            let response = try await fetch(
                port: server.port, "GET", "/v1/f/a%20b/x?name=J%C3%B6rg+M&flag&sum=1%2B1&name=2",
                headers: ["X-Custom": "hello"])
            #expect(response.status == 200)
            #expect(response.header("X-Method") == "GET")
            #expect(response.header("X-Path") == "/v1/f/a%20b/x")
            #expect(response.header("X-Query") == "?name=Jörg M&flag=&sum=1+1&name=2")
            #expect(response.header("X-Custom") == "hello")
            #expect(response.header("Content-Type") == "text/plain")
            #expect(response.body.isEmpty)
        }
    }

    @Test func postEchoesBody() async throws {
        try await withServer { server in
            let response = try await fetch(
                port: server.port, "POST", "/v1/cart/alice/add", headers: ["Content-Type": "application/json"],
                body: #"{"sku":"rose","qty":2}"#)
            #expect(response.status == 200)
            #expect(response.header("X-Method") == "POST")
            #expect(response.header("X-Path") == "/v1/cart/alice/add")
            #expect(response.text == #"{"sku":"rose","qty":2}"#)
        }
    }

    @Test func emptyBodies() async throws {
        try await withServer { server in
            let post = try await fetch(port: server.port, "POST", "/empty", body: "")
            #expect(post.status == 200)
            #expect(post.body.isEmpty)
            #expect(post.header("Content-Length") == "0")
            let get = try await fetch(port: server.port, "GET", "/")
            #expect(get.status == 200)
            #expect(get.header("X-Path") == "/")
            #expect(get.header("X-Query") == "?")
        }
    }

    /// The GET after the HEAD, on the same connection, is read cleanly only if the HEAD's answer carried no body.
    @Test func headRequestGetsHeadersOnly() async throws {
        try await withServer(handler: { _ in HTTPResponse(status: 200, body: Array("hello".utf8)) }) { server in
            let port = server.port
            let (head, get, connections) = try await onThread {
                let client = newClient(port)
                return (try client.request("HEAD", "/"), try client.request("GET", "/"), client.connectionsOpened)
            }
            #expect(head.status == 200)
            #expect(head.header("Content-Length") == "5")
            #expect(head.header("X-Request-Id") != nil)
            #expect(head.body.isEmpty)
            #expect(get.text == "hello")
            #expect(connections == 1)
        }
    }

    @Test func keepAliveServesRequestsInTurn() async throws {
        try await withServer { server in
            let port = server.port
            let (responses, connections) = try await onThread {
                let client = newClient(port)
                let responses = try (1...3).map { index in
                    try client.request("POST", "/n/\(index)", body: "body \(index)")
                }
                return (responses, client.connectionsOpened)
            }
            #expect(responses.map(\.text) == ["body 1", "body 2", "body 3"])
            #expect(responses.map { $0.header("X-Path") } == ["/n/1", "/n/2", "/n/3"])
            #expect(connections == 1)
        }
    }

    @Test func requestIDIsKeptWhenSane() async throws {
        try await withServer { server in
            let id = "req-7f3a_ABC.~!"
            let response = try await fetch(port: server.port, "GET", "/", headers: ["X-Request-Id": id])
            #expect(response.header("X-Request-Id") == id)
            #expect(response.header("X-Seen-Request-Id") == id)
        }
    }

    @Test(arguments: [nil, "has space", String(repeating: "a", count: 129), "tab\there", "é"])
    func requestIDIsGeneratedWhenMissingOrInsane(clientID: String?) async throws {
        try await withServer { server in
            let headers = clientID.map { ["X-Request-Id": $0] } ?? [:]
            let response = try await fetch(port: server.port, "GET", "/", headers: headers)
            let id = try #require(response.header("X-Request-Id"))
            #expect(id != clientID)
            #expect(id.count == 15 && id.allSatisfy(\.isHexDigit))
            #expect(response.header("X-Seen-Request-Id") == id)
        }
    }

    @Test func requestIDsAreFreshEachTime() async throws {
        try await withServer { server in
            let first = try await fetch(port: server.port, "GET", "/")
            let second = try await fetch(port: server.port, "GET", "/")
            #expect(first.header("X-Request-Id") != second.header("X-Request-Id"))
        }
    }

    @Test func declaredBodyOverLimitIsRefusedBeforeItIsSent() async throws {
        try await withServer { server in
            let port = server.port
            // Only the headers are sent, declaring a body past the discard bound (16 MiB): the answer must come
            // without the server waiting for any of it.
            let response = try await onThread {
                let connection = try openConnection(port)
                try connection.send(
                    "POST /v1/f/e/c HTTP/1.1\r\nHost: x\r\nX-Request-Id: big-1\r\nContent-Length: \(1 << 30)\r\n\r\n")
                return try connection.readResponse()
            }
            expectBodyTooLarge(response, requestID: "big-1")
            // The server is still fine afterwards.
            #expect(try await fetch(port: port, "GET", "/after").status == 200)
        }
    }

    /// How Python's http.client, Go and Node send a large body: the head, then the body straight after, no
    /// `Expect`. They must read the 413, not a broken pipe.
    @Test func declaredBodyOverLimitSentWholeIsAnswered413() async throws {
        try await withServer { server in
            let port = server.port
            let body = [UInt8](repeating: UInt8(ascii: "x"), count: 2 << 20)
            // The server reads and drops the body (it is within the discard bound), then answers: the client's
            // send completes and it reads the 413.
            let response = try await onThread {
                try newClient(port).request("POST", "/v1/f/e/c", bodyBytes: body, headers: ["X-Request-Id": "big-2"])
            }
            expectBodyTooLarge(response, requestID: "big-2")
            #expect(try await fetch(port: port, "GET", "/after").status == 200)
        }
    }

    /// curl's way with a large body: `Expect: 100-continue`, and the body only after a 100. The 413 comes instead,
    /// and the body is never sent.
    @Test func declaredBodyOverLimitWithExpectContinueIsAnswered413() async throws {
        try await withServer { server in
            let port = server.port
            let body = [UInt8](repeating: UInt8(ascii: "x"), count: 2 << 20)
            let response = try await onThread {
                try newClient(port).request(
                    "POST", "/v1/f/e/c", bodyBytes: body, headers: ["X-Request-Id": "big-3", "Expect": "100-continue"])
            }
            expectBodyTooLarge(response, requestID: "big-3")
            #expect(try await fetch(port: port, "GET", "/after").status == 200)
        }
    }

    @Test func bodyWithinLimitWithExpectContinueGets100ThenTheAnswer() async throws {
        try await withServer { server in
            let port = server.port
            let (interim, final) = try await onThread {
                let connection = try openConnection(port)
                try connection.send("POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
                let interim = try connection.readResponse()
                try connection.send("hello")
                return (interim, try connection.readResponse())
            }
            #expect(interim.status == 100)
            #expect(final.status == 200)
            #expect(final.text == "hello")
        }
    }

    /// Slowloris: a request head trickled in a byte at a time never lets libmicrohttpd's idle timeout run out,
    /// but the header timeout closes it; a keep-alive connection that sends nothing after its answer goes too.
    @Test func aRequestHeadTrickledInIsCutOffAtTheHeaderTimeout() async throws {
        try await withServer(headerTimeoutSeconds: 1) { server in
            let port = server.port
            let (cutAfter, error) = try await onThread { () -> (Double, String?) in
                let connection = try openConnection(port)
                let start = Date()
                do {
                    try connection.send("GET /slow HTTP/1.1\r\nHost: x\r\n")
                    for _ in 0..<40 {
                        try connection.send("X")
                        Thread.sleep(forTimeInterval: 0.2)
                    }
                    _ = try connection.readResponse()
                    return (Date().timeIntervalSince(start), nil)
                } catch {
                    return (Date().timeIntervalSince(start), "\(error)")
                }
            }
            #expect(error != nil, "a head trickled for 8 s must be cut off")
            #expect(cutAfter < 4, "cut off after \(cutAfter) s with a 1 s header timeout")
            // A keep-alive connection idle after its answer is closed too, and a prompt client is unaffected.
            let idle = try await onThread { () -> Bool in
                let connection = try openConnection(port)
                try connection.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(try connection.readResponse().status == 200)
                Thread.sleep(forTimeInterval: 3)
                return (try? connection.readToEnd()) != nil
            }
            #expect(idle, "the idle keep-alive connection was closed cleanly")
            #expect(try await fetch(port: port, "GET", "/after").status == 200)
        }
    }

    /// One address may hold only so many connections: the next is closed at once, and others are unaffected
    /// once it lets one go.
    @Test func connectionsPastThePerAddressCapAreClosed() async throws {
        try await withServer(maxConnectionsPerAddress: 3) { server in
            let port = server.port
            let refused = try await onThread { () -> String? in
                let held = try (0..<3).map { _ in try openConnection(port) }
                for connection in held { try connection.send("GET /held HTTP/1.1\r\nHost: x\r\n\r\n") }
                for connection in held { #expect(try connection.readResponse().status == 200) }
                let extra = try openConnection(port)
                do {
                    try extra.send("GET /extra HTTP/1.1\r\nHost: x\r\n\r\n")
                    _ = try extra.readResponse()
                    return nil
                } catch {
                    held[0].close()
                    return "\(error)"
                }
            }
            #expect(refused != nil, "a fourth connection from one address must be refused")
            #expect(try await settles { (try? newClient(port).request("GET", "/later").status) == 200 })
        }
    }

    /// Query strings: up to the bound they reach the handler; past it, 400, however many parameters there are.
    @Test func tooManyQueryParametersAre400() async throws {
        try await withServer { server in
            let port = server.port
            let hundred = (0..<100).map { "p\($0)=\($0)" }.joined(separator: "&")
            #expect(try await fetch(port: port, "GET", "/q?" + hundred).status == 200)
            // Thousands of them would exhaust libmicrohttpd's per-connection memory before any handler ran.
            let many = String(repeating: "a=1&", count: 5000)
            let response = try await fetch(port: port, "GET", "/q?" + many)
            #expect(response.status == 400)
            #expect(response.text.contains("At most 100 query parameters"), "\(response.text)")
        }
    }

    @Test func chunkedBodyWithinLimitArrivesWhole() async throws {
        try await withServer(maxBodyBytes: 1000) { server in
            let port = server.port
            let response = try await onThread {
                let connection = try openConnection(port)
                try connection.send(
                    "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                for piece in ["hello ", "chunked ", "world"] {
                    try connection.send(String(piece.utf8.count, radix: 16) + "\r\n" + piece + "\r\n")
                }
                try connection.send("0\r\n\r\n")
                return try connection.readResponse()
            }
            #expect(response.status == 200)
            #expect(response.text == "hello chunked world")
        }
    }

    @Test func chunkedBodyOverLimitIsRefused() async throws {
        try await withServer(maxBodyBytes: 1000) { server in
            let port = server.port
            let response = try await onThread {
                let connection = try openConnection(port)
                try connection.send(
                    "POST /c HTTP/1.1\r\nHost: x\r\nX-Request-Id: chunky\r\nTransfer-Encoding: chunked\r\n\r\n")
                let piece = String(repeating: "x", count: 400)
                for _ in 0..<4 { try connection.send("190\r\n\(piece)\r\n") }
                try connection.send("0\r\n\r\n")
                return try connection.readResponse()
            }
            expectBodyTooLarge(response, requestID: "chunky", limit: 1000)
            #expect(try await fetch(port: port, "GET", "/after").status == 200)
        }
    }

    /// A chunked body announces no length, so the server finds out only while reading it. Sizes around twice the
    /// 1 MiB limit, where the server stops reading; 2 MiB + 2 is a 2 MiB JSON string with its quotes.
    @Test(arguments: [(1 << 20) + 1, 2 << 20, (2 << 20) + 2, 3 << 20])
    func chunkedBodyOverLimitIsAnswered413(size: Int) async throws {
        try await withServer { server in
            let port = server.port
            // Within the discard bound (16 MiB here) the rest is read and dropped, and the 413 comes at the end.
            let response = try await onThread {
                let connection = try openConnection(port)
                try connection.send(
                    "POST /v1/f/e/c HTTP/1.1\r\nHost: x\r\nX-Request-Id: chunky-\(size)\r\n"
                        + "Transfer-Encoding: chunked\r\n\r\n")
                var left = size
                while left > 0 {
                    let piece = min(left, 1 << 16)
                    try connection.send(
                        String(piece, radix: 16) + "\r\n" + String(repeating: "x", count: piece) + "\r\n")
                    left -= piece
                }
                try connection.send("0\r\n\r\n")
                return try connection.readResponse()
            }
            expectBodyTooLarge(response, requestID: "chunky-\(size)")
            #expect(try await fetch(port: port, "GET", "/after").status == 200)
        }
    }

    /// A body that keeps coming is cut off: the client's send is reset long before 100 MiB.
    @Test func endlessChunkedBodyIsCutOff() async throws {
        try await withServer(maxBodyBytes: 1000) { server in
            let port = server.port
            let (sent, failure) = try await onThread {
                let connection = try openConnection(port)
                try connection.send("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                let piece = Array(("3E8\r\n" + String(repeating: "x", count: 1000) + "\r\n").utf8)
                var sent = 0
                while sent < 100 << 20 {
                    do throws(TestHTTPError) {
                        try connection.send(piece)
                    } catch {
                        return (sent, Optional(error))
                    }
                    sent += 1000
                }
                return (sent, nil)
            }
            #expect(sent < 100 << 20)
            #expect(failure?.kind == .reset, "\(String(describing: failure))")
            #expect(try await fetch(port: port, "GET", "/after").status == 200)
        }
    }

    /// Every handler waits until all of them have started, so this only finishes if the server runs them at once.
    @Test func manyConcurrentSlowRequestsAreAllAnswered() async throws {
        let count = 200
        let barrier = Barrier(count: count)
        let handler: HTTPHandler = { request in
            await barrier.arrive()
            try? await Task.sleep(for: .milliseconds(10))
            return HTTPResponse(status: 200, body: Array(request.path.utf8))
        }
        try await withServer(handler: handler) { server in
            let port = server.port
            let bodies = try await onThread {
                let connections = try (0..<count).map { _ in try openConnection(port) }
                for (index, connection) in connections.enumerated() {
                    try connection.sendRequest("GET", "/slow/\(index)")
                }
                return try connections.map { try $0.readResponse().text }
            }
            #expect(bodies == (0..<count).map { "/slow/\($0)" })
        }
    }

    /// libmicrohttpd may only notice the half-sent request when the connection times out; `withServer` then checks
    /// that it was released.
    @Test func clientLeavingMidBodyDoesNotHurtTheServer() async throws {
        try await withServer(connectionTimeoutSeconds: 1) { server in
            let port = server.port
            try await onThread {
                let connection = try openConnection(port)
                try connection.send("POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
                connection.close()
            }
            let response = try await fetch(port: port, "POST", "/next", body: "still here")
            #expect(response.status == 200)
            #expect(response.text == "still here")
        }
    }

    @Test func clientLeavingWhileItsHandlerRunsDoesNotHurtTheServer() async throws {
        let gate = Gate()
        let handler: HTTPHandler = { request in
            if request.path == "/slow" { await gate.wait() }
            return HTTPResponse(status: 200, body: Array(request.path.utf8))
        }
        try await withServer(handler: handler) { server in
            let port = server.port
            try await onThread {
                let connection = try openConnection(port)
                try connection.sendRequest("GET", "/slow")
                connection.close()
            }
            try #require(await gate.waitForWaiter())
            await gate.open()
            let response = try await fetch(port: port, "GET", "/next")
            #expect(response.text == "/next")
        }
    }

    @Test func startOnAPortInUseThrowsAClearError() async throws {
        try await withServer { server in
            let second = HTTPServer(
                configuration: HTTPServerConfiguration(host: "127.0.0.1", port: server.port),
                logger: Logger(label: "test"), handler: echo)
            let error = #expect(throws: HTTPServerError.self) { try second.start() }
            #expect(
                error?.message.hasPrefix("cannot listen on 127.0.0.1:\(server.port): Address already in use") == true)
        }
    }

    @Test func stopReleasesThePort() async throws {
        let port = try await withServer { server in server.port }
        let again = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: port), logger: Logger(label: "test"),
            handler: echo)
        try again.start()
        #expect(try await fetch(port: port, "GET", "/again").header("X-Path") == "/again")
        await again.stop(gracePeriod: .seconds(5))
    }

    @Test(arguments: ["example.com", "300.1.1.1", "::1::2"])
    func startOnAnInvalidHostThrows(host: String) {
        let server = HTTPServer(
            configuration: HTTPServerConfiguration(host: host, port: 0), logger: Logger(label: "test"), handler: echo)
        let error = #expect(throws: HTTPServerError.self) { try server.start() }
        #expect(error?.message.contains("not an IP address literal") == true)
    }

    @Test func listensOnIPv6Loopback() async throws {
        let server = HTTPServer(
            configuration: HTTPServerConfiguration(host: "[::1]", port: 0), logger: Logger(label: "test"),
            handler: echo)
        try server.start()
        #expect(server.port > 0)
        await server.stop(gracePeriod: .seconds(5))
    }

    @Test func quiesceAndStopStillAnswerTheRequestInFlight() async throws {
        let gate = Gate()
        let handler: HTTPHandler = { request in
            await gate.wait()
            return HTTPResponse(status: 200, body: Array("finished".utf8))
        }
        let server = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0, threads: 2),
            logger: Logger(label: "test"), handler: handler)
        try server.start()
        let port = server.port
        async let inFlight = fetch(port: port, "POST", "/v1/f/e/c", body: "x")
        try #require(await gate.waitForWaiter())
        server.quiesce()
        // New connections are refused once quiesced.
        let refusal = await #expect(throws: TestHTTPError.self) { try await onThread { _ = try openConnection(port) } }
        #expect(refusal?.kind == .refused, "\(String(describing: refusal))")
        async let stopped: Void = server.stop(gracePeriod: .seconds(60))
        await gate.open()
        let response = try await inFlight
        await stopped
        #expect(response.status == 200)
        #expect(response.text == "finished")
        #expect(response.header("Connection") == "close")
    }

    @Test func stopAfterTheGracePeriodAnswers503() async throws {
        let gate = Gate()
        let server = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0), logger: Logger(label: "test"),
            handler: { _ in
                await gate.wait()
                return HTTPResponse(status: 200)
            })
        try server.start()
        let port = server.port
        async let inFlight = fetch(port: port, "GET", "/stuck", headers: ["X-Request-Id": "stuck-1"])
        try #require(await gate.waitForWaiter())
        // The handler is still stuck when the grace period ends: the client gets a 503, and the daemon still stops
        // (libmicrohttpd would abort the process if a suspended connection were left behind).
        await server.stop(gracePeriod: .milliseconds(50))
        let response = try await inFlight
        await gate.open()
        #expect(response.status == 503)
        #expect(response.header("Content-Type") == "application/problem+json")
        #expect(response.header("X-Request-Id") == "stuck-1")
    }

    @Test func problemBodiesAreEscapedJSON() {
        let response = HTTPResponse.problem(
            status: 400, detail: "bad \"name\"\n\u{1}é", requestID: "r\\1", title: nil,
            headers: [(name: "A", value: "b")])
        #expect(response.status == 400)
        #expect(response.headers.map(\.name) == ["Content-Type", "A"])
        #expect(
            String(decoding: response.body, as: UTF8.self)
                == #"{"type":"about:blank","title":"Bad Request","status":400,"detail":"bad \"name\"\n\u0001é","request_id":"r\\1"}"#
        )
    }
}

/// Lets `count` tasks through only once all of them have arrived.
actor Barrier {
    private let count: Int
    private var waiting: [CheckedContinuation<Void, Never>] = []
    init(count: Int) { self.count = count }

    func arrive() async {
        if waiting.count + 1 == count {
            waiting.forEach { $0.resume() }
            waiting = []
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }
}

/// Holds handlers until the test opens it, and tells the test when one is waiting.
actor Gate {
    private var isOpen = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func wait() async {
        if isOpen { return }
        await withCheckedContinuation { waiters.append($0) }
    }

    /// Whether a handler is waiting at the gate within `limit`: bounded, so a handler that never comes fails the
    /// test instead of hanging it.
    func waitForWaiter(within limit: Duration = .seconds(30)) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while waiters.isEmpty {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(1))
        }
        return true
    }

    func open() {
        isOpen = true
        waiters.forEach { $0.resume() }
        waiters = []
    }
}
