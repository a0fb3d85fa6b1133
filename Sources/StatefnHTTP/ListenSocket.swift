// The listening socket, bound here rather than by libmicrohttpd so that a failed bind names its reason (errno) and
// port 0 can be read back.
import Glibc

/// A bound, listening, non-blocking TCP socket. Its owner closes it (see `HTTPServer`'s shutdown).
struct ListenSocket {
    let descriptor: Int32
    let port: Int

    /// Binds `host:port` and listens. `host` is an IPv4 or IPv6 literal (brackets allowed) or "localhost".
    /// Wraps socket(2), setsockopt(2), bind(2), listen(2) and getsockname(2).
    static func open(host: String, port: Int) throws(HTTPServerError) -> ListenSocket {
        let shown = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]:\(port)" : "\(host):\(port)"
        guard (0...65535).contains(port) else {
            throw HTTPServerError(message: "cannot listen on \(shown): port out of range")
        }
        guard var address = SocketAddress(host: host, port: UInt16(port)) else {
            throw HTTPServerError(message: "cannot listen on \(shown): not an IP address literal or \"localhost\"")
        }
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw HTTPServerError(message: "cannot listen on \(shown): \(errnoText())") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard address.withSockaddr({ bind(fd, $0, $1) }) == 0, listen(fd, 4096) == 0 else {
            let reason = errnoText()
            close(fd)
            throw HTTPServerError(message: "cannot listen on \(shown): \(reason)")
        }
        guard address.readBack(from: fd) else {
            let reason = errnoText()
            close(fd)
            throw HTTPServerError(message: "cannot listen on \(shown): \(reason)")
        }
        return ListenSocket(descriptor: fd, port: Int(address.port))
    }
}

/// An IPv4 or IPv6 socket address, kept as sockaddr_storage so one value serves both families.
private struct SocketAddress {
    var storage = sockaddr_storage()

    init?(host: String, port: UInt16) {
        var literal = host == "localhost" ? "127.0.0.1" : host
        if literal.hasPrefix("["), literal.hasSuffix("]") { literal = String(literal.dropFirst().dropLast()) }
        let parsed = withUnsafeMutableBytes(of: &storage) { raw -> Bool in
            let v4 = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in.self)
            if inet_pton(AF_INET, literal, &v4.pointee.sin_addr) == 1 {
                v4.pointee.sin_family = sa_family_t(AF_INET)
                v4.pointee.sin_port = port.bigEndian
                return true
            }
            let v6 = raw.baseAddress!.assumingMemoryBound(to: sockaddr_in6.self)
            if inet_pton(AF_INET6, literal, &v6.pointee.sin6_addr) == 1 {
                v6.pointee.sin6_family = sa_family_t(AF_INET6)
                v6.pointee.sin6_port = port.bigEndian
                return true
            }
            return false
        }
        guard parsed else { return nil }
    }

    var family: Int32 { Int32(storage.ss_family) }

    var length: socklen_t {
        socklen_t(family == AF_INET ? MemoryLayout<sockaddr_in>.size : MemoryLayout<sockaddr_in6>.size)
    }

    var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            family == AF_INET
                ? UInt16(bigEndian: raw.load(as: sockaddr_in.self).sin_port)
                : UInt16(bigEndian: raw.load(as: sockaddr_in6.self).sin6_port)
        }
    }

    mutating func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        let length = self.length
        return withUnsafePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }

    /// Replaces the address with the one the kernel bound, which carries the chosen port when 0 was asked for.
    mutating func readBack(from fd: Int32) -> Bool {
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        return withUnsafeMutablePointer(to: &storage) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
    }
}

/// The current errno as "Address already in use (errno 98)".
func errnoText() -> String {
    let code = errno
    return "\(String(cString: strerror(code))) (errno \(code))"
}
