// A small blocking HTTP/1.1 client over a real TCP socket, for tests that drive statefn as a user would. It keeps
// the connection alive between requests; a test that wants concurrency opens one client per thread.
#if canImport(Glibc)
    import Glibc
#endif

public struct TestHTTPResponse: Sendable {
    public var status: Int
    /// Header names lower-cased.
    public var headers: [String: String]
    public var body: [UInt8]
    public var text: String { String(decoding: body, as: UTF8.self) }
}

public struct TestHTTPError: Error, CustomStringConvertible {
    public var description: String
}

public final class TestHTTPClient {
    private let port: UInt16
    private var fd: Int32 = -1
    private var buffer: [UInt8] = []

    public init(port: Int) { self.port = UInt16(port) }
    deinit { disconnect() }

    public func request(
        _ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:]
    ) throws -> TestHTTPResponse {
        try request(method, path, bodyBytes: body.map { Array($0.utf8) }, headers: headers)
    }

    public func request(
        _ method: String, _ path: String, bodyBytes: [UInt8]?, headers: [String: String] = [:]
    ) throws -> TestHTTPResponse {
        // One retry on a fresh connection covers a keep-alive connection the server closed meanwhile.
        do {
            return try attempt(method, path, bodyBytes, headers)
        } catch {
            disconnect()
            return try attempt(method, path, bodyBytes, headers)
        }
    }

    private func attempt(_ method: String, _ path: String, _ body: [UInt8]?, _ headers: [String: String]) throws
        -> TestHTTPResponse
    {
        if fd < 0 { try connect() }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n"
        var headers = headers
        if let body {
            headers["Content-Length"] = String(body.count)
            if headers.keys.allSatisfy({ $0.lowercased() != "content-type" }) { headers["Content-Type"] = "application/json" }
        }
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        do {
            try send(Array(head.utf8) + (body ?? []))
        } catch {
            // A server may answer (413, say) and close before reading a large body: read what it said.
            guard let early = try? readResponse(method: method) else { throw error }
            disconnect()
            return early
        }
        return try readResponse(method: method)
    }

    private func connect() throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestHTTPError(description: "socket: errno \(errno)") }
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            disconnect()
            throw TestHTTPError(description: "connect to 127.0.0.1:\(port): errno \(code)")
        }
        buffer.removeAll()
    }

    public func disconnect() {
        if fd >= 0 { close(fd) }
        fd = -1
        buffer.removeAll()
    }

    private func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw TestHTTPError(description: "send: errno \(errno)") }
            offset += n
        }
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw TestHTTPError(description: n == 0 ? "connection closed" : "recv: errno \(errno)") }
            buffer.append(contentsOf: chunk[0..<n])
            return
        }
    }

    private func readLine() throws -> String {
        while true {
            if let i = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = buffer[..<i].last == UInt8(ascii: "\r") ? buffer[..<(i - 1)] : buffer[..<i]
                let text = String(decoding: line, as: UTF8.self)
                buffer.removeFirst(i + 1)
                return text
            }
            try fill()
        }
    }

    private func readBytes(_ count: Int) throws -> [UInt8] {
        while buffer.count < count { try fill() }
        let bytes = Array(buffer[..<count])
        buffer.removeFirst(count)
        return bytes
    }

    private func readResponse(method: String) throws -> TestHTTPResponse {
        let statusLine = try readLine()
        let parts = statusLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, let status = Int(parts[1]) else {
            throw TestHTTPError(description: "bad status line: \(statusLine)")
        }
        var headers: [String: String] = [:]
        while true {
            let line = try readLine()
            if line.isEmpty { break }
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharactersSpace()
        }
        var body: [UInt8] = []
        if method == "HEAD" || status == 204 || status == 304 {
        } else if headers["transfer-encoding"]?.lowercased() == "chunked" {
            while true {
                let sizeLine = try readLine()
                guard let size = Int(sizeLine.split(separator: ";")[0], radix: 16) else {
                    throw TestHTTPError(description: "bad chunk size \(sizeLine)")
                }
                if size == 0 {
                    while try !readLine().isEmpty {}
                    break
                }
                body += try readBytes(size)
                _ = try readLine()
            }
        } else if let length = headers["content-length"].flatMap({ Int($0) }) {
            body = try readBytes(length)
        } else {
            while (try? fill()) != nil {}
            body = buffer
            buffer.removeAll()
        }
        if headers["connection"]?.lowercased() == "close" { disconnect() }
        return TestHTTPResponse(status: status, headers: headers, body: body)
    }
}

extension StringProtocol {
    func trimmingCharactersSpace() -> String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}

extension TestHTTPClient {
    /// One attempt and no more: unlike `request`, no second try on a fresh connection, so a caller that counts
    /// its retries (the fault checker) sees every failure. Any failure closes the connection, so the next call
    /// opens a new one. `timeout` (seconds) bounds each wait to send or receive on a connection this call opens.
    public func requestOnce(
        _ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:], timeout: Double = 60
    ) throws -> TestHTTPResponse {
        do {
            if fd < 0 {
                try connect()
                var limit = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - timeout.rounded(.down)) * 1e6))
                setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            }
            return try attempt(method, path, body.map { Array($0.utf8) }, headers)
        } catch {
            disconnect()
            throw error
        }
    }

    /// Sends a request and, `after` seconds, closes the connection without reading the answer: a reply lost on the
    /// way back, as the fault checker uses it. The server may or may not carry the request out.
    public func sendAndHangUp(
        _ method: String, _ path: String, body: String? = nil, headers: [String: String] = [:], after: Double = 0
    ) throws {
        defer { disconnect() }
        if fd < 0 { try connect() }
        let bytes = body.map { Array($0.utf8) } ?? []
        var head = "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\n"
        var fields = headers
        if body != nil {
            fields["Content-Length"] = String(bytes.count)
            if !fields.keys.contains(where: { $0.lowercased() == "content-type" }) {
                fields["Content-Type"] = "application/json"
            }
        }
        for (name, value) in fields { head += "\(name): \(value)\r\n" }
        try send(Array((head + "\r\n").utf8) + bytes)
        if after > 0 { usleep(useconds_t(after * 1e6)) }
    }
}
