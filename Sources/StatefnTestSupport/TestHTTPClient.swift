// Strict blocking HTTP/1.1 over real TCP, for tests that drive a server the way a user's client would.
// `TestHTTPConnection` is one connection: bytes out, one response in, a half-close. `TestHTTPClient` sends whole
// requests, one at a time, over a connection it keeps alive. Neither retries, reads a reply after a failed send, or
// lets malformed framing pass unless the test asks for it by name, because Python's http.client, Go and Node do none
// of that either: a test must see what they would see. Every failure is a `TestHTTPError` whose `kind` names it.
// (The four types share this file because they are one client; StatefnTestSupport keeps one file per concern.)
#if canImport(Glibc)
    import Glibc
#endif

public struct TestHTTPResponse: Sendable {
    /// The status code. `TestHTTPConnection.readResponse` also returns interim (1xx) responses; `TestHTTPClient`
    /// skips them.
    public var status: Int
    /// Header names lower-cased; the values of a header sent more than once are joined with ", ".
    public var headers: [String: String]
    /// Every header line as it came, in order, with the name as the server spelled it.
    public var fields: [(name: String, value: String)]
    public var body: [UInt8]
    public var text: String { String(decoding: body, as: UTF8.self) }

    /// A header by name, in any case.
    public func header(_ name: String) -> String? { headers[asciiLowercased(name)] }
}

public struct TestHTTPError: Error, CustomStringConvertible, Sendable {
    /// What a client would report. Tests match on this rather than on the text.
    public enum Kind: Sendable, Equatable, CustomStringConvertible {
        /// Nothing accepted the connection (ECONNREFUSED on connect).
        case refused
        /// The peer reset the connection: ECONNRESET or EPIPE on send or receive ("broken pipe").
        case reset
        /// The connection ended (EOF) before the first byte of a status line.
        case closedWithoutResponse
        /// The connection ended partway through a response's head or body.
        case closedMidResponse
        /// No progress within the connection's timeout (SO_RCVTIMEO, SO_SNDTIMEO).
        case timedOut
        /// Bytes that are not an HTTP/1.1 response, or framing a strict client refuses.
        case malformed
        /// Anything else, including test-support failures outside HTTP (a gateway that did not start).
        case other

        public var description: String {
            switch self {
            case .refused: "refused"
            case .reset: "reset"
            case .closedWithoutResponse: "closed without a response"
            case .closedMidResponse: "closed mid-response"
            case .timedOut: "timed out"
            case .malformed: "malformed response"
            case .other: "other"
            }
        }
    }

    public var kind: Kind
    /// Where it happened and the errno, for the test log.
    public var detail: String
    public var description: String { kind == .other ? detail : "\(kind): \(detail)" }

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    /// A failure with no HTTP kind (`.other`), as the rest of StatefnTestSupport reports its own.
    public init(description: String) { self.init(.other, description) }

    func adding(_ context: String) -> TestHTTPError { TestHTTPError(kind, "\(detail) (\(context))") }
}

/// One TCP connection to 127.0.0.1 for tests that need control over the bytes: partial bodies, chunked framing,
/// `Expect: 100-continue`, a half-close, or reading a response before everything was sent. Sends and reads block,
/// so call it from a thread of its own (`onThread`), never from Swift's cooperative pool. Not `Sendable`: one
/// thread owns it.
public final class TestHTTPConnection {
    public let port: Int
    /// Seconds each send or receive may wait before it fails as `.timedOut`.
    public let timeout: Double
    /// Set by `readResponse` when the response ends the connection (`Connection: close`, HTTP/1.0 without
    /// keep-alive, or a body framed by the end of the stream): nothing more will be answered on it.
    public private(set) var peerWillClose = false
    private var fd: Int32 = -1
    private var buffered: [UInt8] = []

    /// Connects to 127.0.0.1:`port`; `.refused` if nothing listens there. `sendBufferBytes: nil` leaves SO_SNDBUF
    /// to the kernel.
    public init(port: Int, timeout: Double = 60, sendBufferBytes: Int? = defaultSendBufferBytes)
        throws(TestHTTPError)
    {
        self.port = port
        self.timeout = timeout
        let created = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard created >= 0 else { throw Self.failure(errno, "socket") }
        fd = created
        var limit = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        if var size = sendBufferBytes.map(Int32.init) {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let descriptor = fd
        let (_, code) = retryingInterrupts {
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Int(Glibc.connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)))
                }
            }
        }
        if code != 0 {
            close()
            // A blocking connect that runs out of SO_SNDTIMEO says EINPROGRESS.
            throw Self.failure(code == EINPROGRESS ? EAGAIN : code, "connect to 127.0.0.1:\(port)")
        }
    }

    deinit { close() }

    public var isOpen: Bool { fd >= 0 }
    /// Bytes received and not yet consumed by `readResponse`.
    public var unreadByteCount: Int { buffered.count }

    /// Sends every byte, or throws: `.reset` when the peer is gone (EPIPE, ECONNRESET), `.timedOut` when it stops
    /// reading. Wraps send(2) with MSG_NOSIGNAL, so a closed peer is an error and not SIGPIPE.
    public func send(_ bytes: [UInt8]) throws(TestHTTPError) {
        guard fd >= 0 else { throw TestHTTPError(.other, "send on a closed connection") }
        var offset = 0
        while offset < bytes.count {
            let descriptor = fd
            let (written, code) = retryingInterrupts {
                bytes[offset...].withUnsafeBytes {
                    Glibc.send(descriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                }
            }
            guard written > 0 else {
                throw Self.failure(code, "send to 127.0.0.1:\(port) after \(offset) of \(bytes.count) bytes")
            }
            offset += written
        }
    }

    public func send(_ text: String) throws(TestHTTPError) { try send(Array(text.utf8)) }

    /// SO_SNDBUF for new connections (the kernel doubles it). Left to itself, loopback grows a send buffer up to
    /// tcp_wmem's 4 MiB and swallows a 2 MiB body in one call, before a server that stopped reading resets the
    /// connection: the send "succeeds" and the early answer is read, where Python's http.client, Go and Node, in
    /// another process or across a network, get a broken pipe. A fixed buffer makes this client see what they see.
    public static let defaultSendBufferBytes = 256 << 10

    /// Sends a whole request: `Host` unless the headers name one, the headers in the order given, `Content-Length`
    /// for a body unless the headers frame it themselves (`Content-Length` or `Transfer-Encoding`), and the body.
    public func sendRequest(
        _ method: String, _ target: String, headers: [(name: String, value: String)] = [], body: [UInt8]? = nil
    ) throws(TestHTTPError) {
        try send(Self.requestHead(method, target, port: port, headers: headers, bodyCount: body?.count) + (body ?? []))
    }

    /// The bytes of a request's head, framed as `sendRequest` describes.
    public static func requestHead(
        _ method: String, _ target: String, port: Int, headers: [(name: String, value: String)], bodyCount: Int?
    ) -> [UInt8] {
        let names = Set(headers.map { asciiLowercased($0.name) })
        var head = "\(method) \(target) HTTP/1.1\r\n"
        if !names.contains("host") { head += "Host: 127.0.0.1:\(port)\r\n" }
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if let bodyCount, !names.contains("content-length"), !names.contains("transfer-encoding") {
            head += "Content-Length: \(bodyCount)\r\n"
        }
        return Array((head + "\r\n").utf8)
    }

    /// Closes the sending side only (FIN), like a client that is done writing; responses can still be read.
    /// Wraps shutdown(2) with SHUT_WR.
    public func shutdownWrite() {
        if fd >= 0 { shutdown(fd, Int32(SHUT_WR)) }
    }

    /// Closes the connection; a peer still sending gets a reset. Wraps close(2).
    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
        buffered.removeAll()
    }

    /// Reads one response: an interim 1xx one, or a final one with its body framed by `Content-Length`, chunked
    /// coding, or the end of the stream. `method` matters only for HEAD, whose response has no body. Anything a
    /// strict client would refuse (a bare LF, a header line without a colon, both `Content-Length` and
    /// `Transfer-Encoding`, conflicting lengths, a bad chunk) is `.malformed`.
    public func readResponse(method: String = "GET") throws(TestHTTPError) -> TestHTTPResponse {
        var (response, statusLine) = try readResponseHead()
        let (status, headers, fields) = (response.status, response.headers, response.fields)
        if (100..<200).contains(status) || status == 204 || status == 304 || method == "HEAD" { return response }

        let lengths = fields.filter { asciiLowercased($0.name) == "content-length" }.map(\.value)
        if let coding = headers["transfer-encoding"] {
            guard lengths.isEmpty else {
                throw TestHTTPError(.malformed, "both Transfer-Encoding and Content-Length in \(quoted(statusLine))")
            }
            guard asciiLowercased(coding) == "chunked" else {
                throw TestHTTPError(.malformed, "Transfer-Encoding \(quoted(coding)) is not chunked")
            }
            response.body = try readChunkedBody()
        } else if let first = lengths.first {
            guard lengths.allSatisfy({ $0 == first }), !first.isEmpty, first.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                let length = Int(first)
            else { throw TestHTTPError(.malformed, "Content-Length \(quoted(lengths.joined(separator: ", ")))") }
            response.body = try readBytes(length, while: "reading a \(length)-byte body")
        } else {
            response.body = try readToEnd()
            peerWillClose = true
        }
        return response
    }

    /// Reads a response's status line and headers only (for a streamed body, read on with `readChunk`), and the
    /// status line as sent.
    public func readResponseHead() throws(TestHTTPError) -> (response: TestHTTPResponse, statusLine: String) {
        guard fd >= 0 else { throw TestHTTPError(.other, "read on a closed connection") }
        let head = try readHead()
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0] == "HTTP/1.1" || parts[0] == "HTTP/1.0", parts[1].count == 3,
            parts[1].allSatisfy({ $0.isASCII && $0.isNumber }), let status = Int(parts[1])
        else { throw TestHTTPError(.malformed, "status line \(quoted(statusLine))") }
        var fields: [(name: String, value: String)] = []
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex,
                line[..<colon].utf8.allSatisfy(isTokenByte)
            else { throw TestHTTPError(.malformed, "header line \(quoted(line)) after \(quoted(statusLine))") }
            let name = String(line[..<colon])
            let value = trimmedOWS(line[line.index(after: colon)...])
            fields.append((name: name, value: value))
            let key = asciiLowercased(name)
            headers[key] = headers[key].map { $0 + ", " + value } ?? value
        }
        let response = TestHTTPResponse(status: status, headers: headers, fields: fields, body: [])
        let connectionTokens = Set(
            (headers["connection"] ?? "").split(separator: ",").map { asciiLowercased(trimmedOWS($0)) })
        peerWillClose =
            connectionTokens.contains("close") || (parts[0] == "HTTP/1.0" && !connectionTokens.contains("keep-alive"))
        return (response, statusLine)
    }

    /// Reads until the peer closes and returns what came; `.reset` if it resets instead.
    public func readToEnd() throws(TestHTTPError) -> [UInt8] {
        while try fill(while: "reading to the end of the stream") {}
        defer { buffered.removeAll() }
        return buffered
    }

    private func readHead() throws(TestHTTPError) -> String {
        let marker: [UInt8] = Array("\r\n\r\n".utf8)
        var searched = 0
        while true {
            let found = buffered[max(0, searched - 3)...].firstRange(of: marker)
            // Only the head is searched for a bare LF: the body may hold any bytes.
            let headEnd = found?.lowerBound ?? buffered.count
            if let lf = buffered[..<headEnd].indices.first(where: {
                buffered[$0] == UInt8(ascii: "\n") && ($0 == 0 || buffered[$0 - 1] != UInt8(ascii: "\r"))
            }) {
                throw TestHTTPError(
                    .malformed, "a bare LF in the response head: \(quoted(Array(buffered[..<(lf + 1)])))")
            }
            if let found {
                let head = String(decoding: buffered[..<found.lowerBound], as: UTF8.self)
                buffered.removeSubrange(..<found.upperBound)
                return head
            }
            searched = buffered.count
            guard buffered.count <= 64 << 10 else { throw TestHTTPError(.malformed, "a response head over 64 KiB") }
            let what = buffered.isEmpty ? "waiting for a status line" : "reading a response head"
            guard try fill(while: what) else {
                throw buffered.isEmpty
                    ? TestHTTPError(.closedWithoutResponse, "EOF from 127.0.0.1:\(port) before a status line")
                    : TestHTTPError(
                        .closedMidResponse, "EOF after \(buffered.count) bytes of a response head: \(quoted(buffered))")
            }
        }
    }

    private func readChunkedBody() throws(TestHTTPError) -> [UInt8] {
        var body: [UInt8] = []
        while let chunk = try readChunk() { body += chunk }
        return body
    }

    /// Reads the next chunk of a chunked body; nil after the last one (and its trailers).
    public func readChunk() throws(TestHTTPError) -> [UInt8]? {
        let sizeLine = try readLine(while: "reading a chunk size")
        let digits = sizeLine.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false)[0]
        guard !digits.isEmpty, digits.allSatisfy(\.isHexDigit), let size = Int(digits, radix: 16) else {
            throw TestHTTPError(.malformed, "chunk size line \(quoted(sizeLine))")
        }
        if size == 0 {
            while try !readLine(while: "reading chunked trailers").isEmpty {}
            return nil
        }
        let chunk = try readBytes(size, while: "reading a \(size)-byte chunk")
        guard try readLine(while: "reading the end of a chunk").isEmpty else {
            throw TestHTTPError(.malformed, "a chunk longer than its size \(size)")
        }
        return chunk
    }

    private func readLine(while what: String) throws(TestHTTPError) -> String {
        while true {
            if let end = buffered.firstRange(of: Array("\r\n".utf8)) {
                let line = String(decoding: buffered[..<end.lowerBound], as: UTF8.self)
                buffered.removeSubrange(..<end.upperBound)
                return line
            }
            guard try fill(while: what) else { throw TestHTTPError(.closedMidResponse, "EOF while \(what)") }
        }
    }

    private func readBytes(_ count: Int, while what: String) throws(TestHTTPError) -> [UInt8] {
        while buffered.count < count {
            guard try fill(while: what) else {
                throw TestHTTPError(.closedMidResponse, "EOF after \(buffered.count) bytes while \(what)")
            }
        }
        defer { buffered.removeFirst(count) }
        return Array(buffered[..<count])
    }

    /// Appends what one recv(2) gives; false at EOF.
    private func fill(while what: String) throws(TestHTTPError) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let descriptor = fd
        let (count, code) = retryingInterrupts {
            chunk.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        }
        guard count >= 0 else {
            throw Self.failure(code, "recv from 127.0.0.1:\(port) while \(what), \(buffered.count) bytes in")
        }
        buffered += chunk[..<count]
        return count > 0
    }

    /// errno as the failure a client would report.
    static func failure(_ code: Int32, _ context: String) -> TestHTTPError {
        let kind: TestHTTPError.Kind =
            switch code {
            case ECONNREFUSED: .refused
            case ECONNRESET, EPIPE: .reset
            case EAGAIN, ETIMEDOUT: .timedOut
            default: .other
            }
        let name =
            switch code {
            case ECONNREFUSED: "ECONNREFUSED"
            case ECONNRESET: "ECONNRESET"
            case EPIPE: "EPIPE"
            case EAGAIN: "EAGAIN (no progress within the timeout)"
            case ETIMEDOUT: "ETIMEDOUT"
            default: "errno \(code) (\(String(cString: strerror(code))))"
            }
        return TestHTTPError(kind, "\(context): \(name)")
    }
}

/// Whole requests over one kept-alive connection, one at a time. `request` connects if it is not connected, sends
/// once and reads once: a failed send is thrown, never followed by a read, and a failure on a connection the server
/// closed meanwhile is thrown, never retried on a new one, unless the call opts in (`readAfterFailedSend`,
/// `retry: .onceOnFreshConnection`). Any failure closes the connection, so the next request opens a new one. A test
/// that wants concurrency opens one client per thread (not `Sendable`: one thread owns it).
public final class TestHTTPClient {
    public enum Retry: Sendable {
        case never
        /// After any failure, one more attempt on a new connection: for a test that means to tolerate a kept-alive
        /// connection the server closed meanwhile.
        case onceOnFreshConnection
    }

    public let port: Int
    /// Sent with every request unless the request's own headers name the same header (in any case).
    public var defaultHeaders: [String: String]
    /// Seconds each send or receive may wait, on connections opened from now on.
    public var timeout: Double = 60
    /// Connections opened so far, so a test can check that keep-alive really kept one.
    public private(set) var connectionsOpened = 0
    private var connection: TestHTTPConnection?
    private var answeredOnConnection = 0

    public init(port: Int, defaultHeaders: [String: String] = [:]) {
        self.port = port
        self.defaultHeaders = defaultHeaders
    }

    public var isConnected: Bool { connection != nil }

    public func disconnect() {
        connection?.close()
        connection = nil
        answeredOnConnection = 0
    }

    /// A body is sent as `application/json` unless the headers say otherwise.
    public func request(
        _ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:],
        retry: Retry = .never, readAfterFailedSend: Bool = false
    ) throws(TestHTTPError) -> TestHTTPResponse {
        try request(
            method, path, bodyBytes: body.map { Array($0.utf8) }, headers: headers, retry: retry,
            readAfterFailedSend: readAfterFailedSend)
    }

    /// With `Expect: 100-continue` in the headers, the body goes out only after the server's 100; a final answer
    /// instead (a 413, say) is returned with the body unsent. `readAfterFailedSend` reads a reply the server may have
    /// sent before it stopped reading, as curl does and Python's http.client, Go and Node do not.
    public func request(
        _ method: String, _ path: String, bodyBytes: [UInt8]?, headers: [String: String] = [:],
        retry: Retry = .never, readAfterFailedSend: Bool = false
    ) throws(TestHTTPError) -> TestHTTPResponse {
        switch retry {
        case .never:
            return try attempt(method, path, bodyBytes, headers, readAfterFailedSend, timeout: timeout)
        case .onceOnFreshConnection:
            do throws(TestHTTPError) {
                return try attempt(method, path, bodyBytes, headers, readAfterFailedSend, timeout: timeout)
            } catch {
                return try attempt(method, path, bodyBytes, headers, readAfterFailedSend, timeout: timeout)
            }
        }
    }

    /// `request` with no retry, `timeout` seconds for each send or receive on a connection this call opens: the
    /// fault checker's one attempt.
    public func requestOnce(
        _ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:], timeout: Double = 60
    ) throws(TestHTTPError) -> TestHTTPResponse {
        try attempt(method, path, body.map { Array($0.utf8) }, headers, false, timeout: timeout)
    }

    /// Sends a request and, `after` seconds, closes the connection without reading the answer: a reply lost on the
    /// way back, as the fault checker uses it. The server may or may not carry the request out.
    public func sendAndHangUp(
        _ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:], after: Double = 0
    ) throws(TestHTTPError) {
        defer { disconnect() }
        let bytes = body.map { Array($0.utf8) }
        try connected(timeout: timeout).sendRequest(
            method, path, headers: fields(headers, hasBody: bytes != nil), body: bytes)
        if after > 0 { usleep(useconds_t(after * 1e6)) }
    }

    private func attempt(
        _ method: String, _ path: String, _ body: [UInt8]?, _ headers: [String: String], _ readAfterFailedSend: Bool,
        timeout: Double
    ) throws(TestHTTPError) -> TestHTTPResponse {
        let kept = answeredOnConnection
        do throws(TestHTTPError) {
            let connection = try connected(timeout: timeout)
            guard connection.unreadByteCount == 0 else {
                throw TestHTTPError(
                    .malformed, "\(connection.unreadByteCount) bytes after the previous response on this connection")
            }
            let (response, reusable) = try exchange(
                connection, method, path, body, fields(headers, hasBody: body != nil), readAfterFailedSend)
            answeredOnConnection += 1
            if !reusable || connection.peerWillClose { disconnect() }
            return response
        } catch {
            disconnect()
            throw kept > 0 ? error.adding("on a connection kept alive after \(kept) responses") : error
        }
    }

    private func connected(timeout: Double) throws(TestHTTPError) -> TestHTTPConnection {
        if let connection { return connection }
        let opened = try TestHTTPConnection(port: port, timeout: timeout)
        connectionsOpened += 1
        connection = opened
        answeredOnConnection = 0
        return opened
    }

    /// Sends one request and reads its final response; whether the connection can carry another.
    private func exchange(
        _ connection: TestHTTPConnection, _ method: String, _ path: String, _ body: [UInt8]?,
        _ fields: [(name: String, value: String)], _ readAfterFailedSend: Bool
    ) throws(TestHTTPError) -> (TestHTTPResponse, reusable: Bool) {
        let head = TestHTTPConnection.requestHead(method, path, port: port, headers: fields, bodyCount: body?.count)
        let expectsContinue = fields.contains {
            asciiLowercased($0.name) == "expect" && asciiLowercased($0.value) == "100-continue"
        }
        if expectsContinue, let body, !body.isEmpty {
            try connection.send(head)
            var first = try connection.readResponse(method: method)
            while first.status != 100, (102..<200).contains(first.status) {
                first = try connection.readResponse(method: method)
            }
            // A final answer before the 100 leaves the body unsent, so the connection carries nothing more.
            guard first.status == 100 else { return (first, reusable: false) }
            try connection.send(body)
            return (try finalResponse(connection, method), reusable: true)
        }
        do throws(TestHTTPError) {
            // The head goes out on its own, then the body, as Python's http.client, Go and Node write them.
            try connection.send(head)
            if let body { try connection.send(body) }
        } catch {
            guard readAfterFailedSend else { throw error }
            do throws(TestHTTPError) {
                return (try finalResponse(connection, method), reusable: false)
            } catch let readError {
                throw error.adding("and no response could be read after it: \(readError)")
            }
        }
        return (try finalResponse(connection, method), reusable: true)
    }

    /// Skips interim responses (100 Continue, 103 Early Hints), as every client does.
    private func finalResponse(_ connection: TestHTTPConnection, _ method: String) throws(TestHTTPError)
        -> TestHTTPResponse
    {
        while true {
            let response = try connection.readResponse(method: method)
            if !(100..<200).contains(response.status) || response.status == 101 { return response }
        }
    }

    /// The request's headers, then the default headers it does not name, sorted by name so the bytes are the same
    /// every run; `Content-Type: application/json` for a body unless one is named.
    private func fields(_ headers: [String: String], hasBody: Bool) -> [(name: String, value: String)] {
        let named = Set(headers.keys.map(asciiLowercased))
        var merged = headers.map { (name: $0.key, value: $0.value) }
        merged += defaultHeaders.filter { !named.contains(asciiLowercased($0.key)) }.map {
            (name: $0.key, value: $0.value)
        }
        if hasBody, !merged.contains(where: { asciiLowercased($0.name) == "content-type" }) {
            merged.append((name: "Content-Type", value: "application/json"))
        }
        return merged.sorted { asciiLowercased($0.name) < asciiLowercased($1.name) }
    }
}

/// Runs a syscall again while it fails with EINTR, here and nowhere else; the errno of a failure, else 0.
private func retryingInterrupts(_ call: () -> Int) -> (result: Int, errno: Int32) {
    while true {
        let result = call()
        if result >= 0 { return (result, 0) }
        let code = errno
        if code != EINTR { return (result, code) }
    }
}

/// Header names are ASCII tokens, so this lower-cases bytes and leaves anything else alone.
private func asciiLowercased(_ text: String) -> String {
    String(decoding: text.utf8.map { $0 >= 65 && $0 <= 90 ? $0 + 32 : $0 }, as: UTF8.self)
}

/// RFC 9110 tchar.
private func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "z"),
        UInt8(ascii: "A")...UInt8(ascii: "Z"):
        true
    default:
        Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
    }
}

private func trimmedOWS(_ text: Substring) -> String {
    let isOWS: (Character) -> Bool = { $0 == " " || $0 == "\t" }
    return String(text.drop(while: isOWS).reversed().drop(while: isOWS).reversed())
}

private func quoted(_ text: String) -> String { String(text.prefix(200)).debugDescription }
private func quoted(_ bytes: [UInt8]) -> String { quoted(String(decoding: bytes.prefix(200), as: UTF8.self)) }
