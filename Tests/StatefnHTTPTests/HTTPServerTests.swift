// The front door over real HTTP on 127.0.0.1: parsing, request ids, body limits, suspend/resume under load,
// clients that go away, and shutdown with requests in flight.
import Foundation
import Logging
@testable import StatefnHTTP
import Testing

/// Starts a server on a free port, runs `body`, checks that every request was released, and stops the server.
func withServer<T>(
    maxBodyBytes: Int = 1 << 20, connectionTimeoutSeconds: Int = 60, executor: (any TaskExecutor)? = nil,
    handler: @escaping HTTPHandler = echo, _ body: (HTTPServer) async throws -> T
) async throws -> T {
    let server = HTTPServer(
        configuration: HTTPServerConfiguration(
            host: "127.0.0.1", port: 0, threads: 2, maxBodyBytes: maxBodyBytes,
            connectionTimeoutSeconds: connectionTimeoutSeconds),
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

/// Polls `condition` for up to a minute.
func settles(_ condition: () -> Bool) async -> Bool {
    for _ in 0..<6000 {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return condition()
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

@Test func getEchoesMethodPathQueryAndHeaders() async throws {
    try await withServer { server in
        let response = try await fetch(
            port: server.port, "GET", "/v1/f/a%20b/x?name=J%C3%B6rg+M&flag&sum=1%2B1&name=2",
            headers: [("X-Custom", "hello")])
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
            port: server.port, "POST", "/v1/cart/alice/add", headers: [("Content-Type", "application/json")],
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

@Test func headRequestGetsHeadersOnly() async throws {
    try await withServer(handler: { _ in HTTPResponse(status: 200, body: Array("hello".utf8)) }) { server in
        let port = server.port
        let response = try await offPool {
            let connection = try TestConnection(port: port)
            try connection.send(requestText("HEAD", "/"))
            return try connection.readHeadResponse()
        }
        #expect(response.status == 200)
        #expect(response.header("Content-Length") == "5")
        #expect(response.header("X-Request-Id") != nil)
    }
}

@Test func keepAliveServesRequestsInTurn() async throws {
    try await withServer { server in
        let port = server.port
        let responses = try await offPool {
            let connection = try TestConnection(port: port)
            return try (1...3).map { index in
                try connection.send(requestText("POST", "/n/\(index)", body: "body \(index)", keepAlive: true))
                return try connection.readResponse()
            }
        }
        #expect(responses.map(\.text) == ["body 1", "body 2", "body 3"])
        #expect(responses.map { $0.header("X-Path") } == ["/n/1", "/n/2", "/n/3"])
    }
}

@Test func requestIDIsKeptWhenSane() async throws {
    try await withServer { server in
        let id = "req-7f3a_ABC.~!"
        let response = try await fetch(port: server.port, "GET", "/", headers: [("X-Request-Id", id)])
        #expect(response.header("X-Request-Id") == id)
        #expect(response.header("X-Seen-Request-Id") == id)
    }
}

@Test(arguments: [nil, "has space", String(repeating: "a", count: 129), "tab\there", "é"])
func requestIDIsGeneratedWhenMissingOrInsane(clientID: String?) async throws {
    try await withServer { server in
        let headers = clientID.map { [("X-Request-Id", $0)] } ?? []
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
        // Only the headers are sent: the answer must come without the server waiting for 2 MiB of body.
        let response = try await offPool {
            let connection = try TestConnection(port: port)
            try connection.send(
                "POST /v1/f/e/c HTTP/1.1\r\nHost: x\r\nX-Request-Id: big-1\r\nContent-Length: \(2 << 20)\r\n\r\n")
            return try connection.readResponse()
        }
        #expect(response.status == 413)
        #expect(response.header("Content-Type") == "application/problem+json")
        #expect(response.header("X-Request-Id") == "big-1")
        #expect(
            response.text
                == #"{"type":"about:blank","title":"Content Too Large","status":413,"detail":"The request body is larger than the limit of 1048576 bytes.","request_id":"big-1"}"#
        )
        // The server is still fine afterwards.
        #expect(try await fetch(port: port, "GET", "/after").status == 200)
    }
}

@Test func chunkedBodyWithinLimitArrivesWhole() async throws {
    try await withServer(maxBodyBytes: 1000) { server in
        let port = server.port
        let response = try await offPool {
            let connection = try TestConnection(port: port)
            try connection.send("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
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
        let response = try await offPool {
            let connection = try TestConnection(port: port)
            try connection.send(
                "POST /c HTTP/1.1\r\nHost: x\r\nX-Request-Id: chunky\r\nTransfer-Encoding: chunked\r\n\r\n")
            let piece = String(repeating: "x", count: 400)
            for _ in 0..<4 { try connection.send("190\r\n\(piece)\r\n") }
            try connection.send("0\r\n\r\n")
            return try connection.readResponse()
        }
        #expect(response.status == 413)
        #expect(response.header("Content-Type") == "application/problem+json")
        #expect(response.header("X-Request-Id") == "chunky")
        #expect(response.text.contains(#""detail":"The request body is larger than the limit of 1000 bytes.""#))
        #expect(try await fetch(port: port, "GET", "/after").status == 200)
    }
}

@Test func endlessChunkedBodyIsCutOff() async throws {
    try await withServer(maxBodyBytes: 1000) { server in
        let port = server.port
        let sent = try await offPool {
            let connection = try TestConnection(port: port)
            try connection.send("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            let piece = "3E8\r\n" + String(repeating: "x", count: 1000) + "\r\n"
            var sent = 0
            while sent < 100 << 20, (try? connection.send(piece)) != nil { sent += 1000 }
            return sent
        }
        #expect(sent < 100 << 20)
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
        let bodies = try await offPool {
            let connections = try (0..<count).map { _ in try TestConnection(port: port) }
            for (index, connection) in connections.enumerated() {
                try connection.send(requestText("GET", "/slow/\(index)"))
            }
            return try connections.map { try $0.readResponse().text }
        }
        #expect(bodies == (0..<count).map { "/slow/\($0)" })
    }
}

/// libmicrohttpd may only notice the half-sent request when the connection times out; `withServer` then checks that
/// it was released.
@Test func clientLeavingMidBodyDoesNotHurtTheServer() async throws {
    try await withServer(connectionTimeoutSeconds: 1) { server in
        let port = server.port
        try await offPool {
            let connection = try TestConnection(port: port)
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
        try await offPool {
            let connection = try TestConnection(port: port)
            try connection.send(requestText("GET", "/slow"))
            connection.close()
        }
        await gate.waitForWaiter()
        await gate.open()
        let response = try await fetch(port: port, "GET", "/next")
        #expect(response.text == "/next")
    }
}

@Test func startOnAPortInUseThrowsAClearError() async throws {
    try await withServer { server in
        let second = HTTPServer(
            configuration: HTTPServerConfiguration(host: "127.0.0.1", port: server.port), logger: Logger(label: "test"),
            handler: echo)
        let error = #expect(throws: HTTPServerError.self) { try second.start() }
        #expect(error?.message.hasPrefix("cannot listen on 127.0.0.1:\(server.port): Address already in use") == true)
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
        configuration: HTTPServerConfiguration(host: "[::1]", port: 0), logger: Logger(label: "test"), handler: echo)
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
        configuration: HTTPServerConfiguration(host: "127.0.0.1", port: 0, threads: 2), logger: Logger(label: "test"),
        handler: handler)
    try server.start()
    let port = server.port
    async let inFlight = fetch(port: port, "POST", "/v1/f/e/c", body: "x")
    await gate.waitForWaiter()
    server.quiesce()
    // New connections are refused once quiesced.
    await #expect(throws: ClientError.self) { try await offPool { _ = try TestConnection(port: port) } }
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
    async let inFlight = fetch(port: port, "GET", "/stuck", headers: [("X-Request-Id", "stuck-1")])
    await gate.waitForWaiter()
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
        status: 400, detail: "bad \"name\"\n\u{1}é", requestID: "r\\1", title: nil, headers: [(name: "A", value: "b")])
    #expect(response.status == 400)
    #expect(response.headers.map(\.name) == ["Content-Type", "A"])
    #expect(
        String(decoding: response.body, as: UTF8.self)
            == #"{"type":"about:blank","title":"Bad Request","status":400,"detail":"bad \"name\"\n\u0001é","request_id":"r\\1"}"#
    )
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
    private var watchers: [CheckedContinuation<Void, Never>] = []

    func wait() async {
        if isOpen { return }
        watchers.forEach { $0.resume() }
        watchers = []
        await withCheckedContinuation { waiters.append($0) }
    }

    func waitForWaiter() async {
        if !waiters.isEmpty { return }
        await withCheckedContinuation { watchers.append($0) }
    }

    func open() {
        isOpen = true
        waiters.forEach { $0.resume() }
        waiters = []
    }
}
