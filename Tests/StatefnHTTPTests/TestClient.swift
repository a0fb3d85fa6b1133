// A tiny blocking HTTP/1.1 client over POSIX sockets, so the tests talk to the server the way curl would.
// Blocking calls run on their own threads (`offPool`), never on Swift's cooperative pool, which the server's
// handlers need.
import Foundation
import Glibc

struct ClientError: Error, CustomStringConvertible {
    var description: String
}

struct RawResponse: Sendable {
    var status: Int
    var headers: [(name: String, value: String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first(where: { $0.name.lowercased() == name.lowercased() })?.value
    }
    var text: String { String(decoding: body, as: UTF8.self) }
}

/// Runs blocking work on a fresh thread and awaits it.
func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

final class TestConnection {
    let fd: Int32
    private var buffered: [UInt8] = []

    /// Connects to 127.0.0.1:port. Reads give up after a minute, so a broken server fails a test instead of
    /// hanging it.
    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ClientError(description: "socket: \(errno)") }
        var timeout = timeval(tv_sec: 60, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            let code = errno
            Glibc.close(fd)
            throw ClientError(description: "connect: errno \(code)")
        }
    }

    deinit { Glibc.close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { throw ClientError(description: "send: errno \(errno)") }
            offset += written
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Closes the sending side only, like a client that is done writing.
    func close() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Reads one response: status line, headers, and a body framed by Content-Length (or by the end of the stream).
    func readResponse() throws -> RawResponse {
        let head = try readUntilBlankLine()
        var lines = head.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, statusLine[0].hasPrefix("HTTP/1."), let status = Int(statusLine[1]) else {
            throw ClientError(description: "bad status line in \(head)")
        }
        let headers = lines.filter { !$0.isEmpty }.map { line in
            let colon = line.firstIndex(of: ":")!
            return (
                name: String(line[..<colon]),
                value: line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            )
        }
        var response = RawResponse(status: status, headers: headers, body: [])
        if let length = response.header("Content-Length").flatMap({ Int($0) }) {
            response.body = try readExactly(length)
        } else {
            response.body = try readToEnd()
        }
        return response
    }

    /// Reads a response to a HEAD request, which announces a length but carries no body.
    func readHeadResponse() throws -> RawResponse {
        let head = try readUntilBlankLine()
        let status = Int(head.split(separator: " ")[1])!
        let headers = head.split(separator: "\r\n").dropFirst().map { line in
            let colon = line.firstIndex(of: ":")!
            return (name: String(line[..<colon]), value: line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        return RawResponse(status: status, headers: headers, body: [])
    }

    private func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count < 0 { throw ClientError(description: "recv: errno \(errno)") }
        buffered += chunk[..<count]
        return count > 0
    }

    private func readUntilBlankLine() throws -> String {
        let marker = Array("\r\n\r\n".utf8)
        while true {
            if let range = buffered.firstRange(of: marker) {
                let head = String(decoding: buffered[..<range.lowerBound], as: UTF8.self)
                buffered.removeSubrange(..<range.upperBound)
                return head
            }
            guard try fill() else { throw ClientError(description: "connection closed before a response") }
        }
    }

    private func readExactly(_ count: Int) throws -> [UInt8] {
        while buffered.count < count {
            guard try fill() else { throw ClientError(description: "connection closed mid-body") }
        }
        defer { buffered.removeFirst(count) }
        return Array(buffered[..<count])
    }

    private func readToEnd() throws -> [UInt8] {
        while try fill() {}
        defer { buffered = [] }
        return buffered
    }
}

/// Builds a request. `Content-Length` is added for a body unless the caller frames it itself.
func requestText(
    _ method: String, _ target: String, headers: [(String, String)] = [], body: String? = nil, keepAlive: Bool = false
) -> String {
    var text = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for (name, value) in headers { text += "\(name): \(value)\r\n" }
    if let body { text += "Content-Length: \(body.utf8.count)\r\n" }
    if !keepAlive { text += "Connection: close\r\n" }
    return text + "\r\n" + (body ?? "")
}

/// One request on a new connection.
func fetch(
    port: Int, _ method: String, _ target: String, headers: [(String, String)] = [], body: String? = nil
) async throws -> RawResponse {
    try await offPool {
        let connection = try TestConnection(port: port)
        try connection.send(requestText(method, target, headers: headers, body: body))
        return try connection.readResponse()
    }
}
