// The header timeout (`HTTPServerConfiguration.headerTimeoutSeconds`): libmicrohttpd's own timeout is an idle
// timeout, which a client trickling one byte of its request head at a time never reaches (slowloris). Every
// connection gets a deadline for its request head, from when it opens and again from the end of each request
// (a keep-alive connection waiting for the next one); the head's arrival clears it. Once a second the connections
// past their deadline are shut down, and libmicrohttpd then closes them.
import CMicroHTTPD
import Dispatch
import Glibc
import Logging
import Synchronization

final class ConnectionDeadlines: @unchecked Sendable {  // `timer` is set up once, in init; the rest is under `entries`
    private struct Entry {
        var socket: Int32
        /// Monotonic nanoseconds; nil while a request is being read, handled or answered.
        var headDeadline: UInt64?
    }

    private let timeout: UInt64
    private let logger: Logger
    /// By connection pointer. An entry goes when libmicrohttpd says the connection closed, which it does before it
    /// closes the socket: a socket shut down under this lock is always still the connection's own.
    private let entries = Mutex<[UInt: Entry]>([:])
    /// nil with the timeout off: a dispatch source must be resumed before it may be released.
    private let timer: DispatchSourceTimer?

    init(timeoutSeconds: Int, logger: Logger) {
        timeout = UInt64(timeoutSeconds) * 1_000_000_000
        self.logger = logger
        guard timeoutSeconds > 0 else {
            timer = nil
            return
        }
        let timer = DispatchSource.makeTimerSource(queue: .global())
        timer.schedule(deadline: .now() + 1, repeating: 1.0, leeway: .milliseconds(200))
        self.timer = timer
        timer.setEventHandler { [weak self] in self?.sweep() }
        timer.resume()
    }

    deinit { timer?.cancel() }

    private static func key(_ connection: OpaquePointer) -> UInt { UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(connection))) }

    func opened(_ connection: OpaquePointer) {
        guard timeout > 0 else { return }
        let socket = cmhd_connection_fd(connection)
        entries.withLock { $0[Self.key(connection)] = Entry(socket: socket, headDeadline: Self.now() + timeout) }
    }

    func closed(_ connection: OpaquePointer) {
        guard timeout > 0 else { return }
        _ = entries.withLock { $0.removeValue(forKey: Self.key(connection)) }
    }

    /// A request head is in: its connection has no deadline while the request runs.
    func headArrived(on connection: OpaquePointer) {
        guard timeout > 0 else { return }
        entries.withLock { $0[Self.key(connection)]?.headDeadline = nil }
    }

    /// A request is over: the next request's head is due within the timeout.
    func requestEnded(on connection: OpaquePointer) {
        guard timeout > 0 else { return }
        let deadline = Self.now() + timeout
        entries.withLock { $0[Self.key(connection)]?.headDeadline = deadline }
    }

    private func sweep() {
        let now = Self.now()
        let cut = entries.withLock { entries -> Int in
            var cut = 0
            for (key, entry) in entries {
                guard let deadline = entry.headDeadline, deadline <= now, entry.socket >= 0 else { continue }
                shutdown(entry.socket, Int32(SHUT_RDWR))
                entries[key]?.headDeadline = nil
                cut += 1
            }
            return cut
        }
        if cut > 0 {
            logger.notice(
                "closed connections whose request head did not arrive within the header timeout",
                metadata: ["connections": "\(cut)", "header_timeout_s": "\(timeout / 1_000_000_000)"])
        }
    }

    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
}
