// A response body written while it is being sent: server-sent events. No thread waits for a stream's next bytes:
// when it has nothing to send, its connection is suspended, and the next `write` resumes it.
import CMicroHTTPD
import Synchronization

/// A live response body. A handler returns it in `HTTPResponse.stream`; whoever produces the data (the event feed)
/// calls `write` from any thread, and `finish` to end the response.
///
/// The writer never blocks: bytes wait here until the connection takes them. A client that does not read is cut
/// off when a write finds more than `bufferLimit` bytes still waiting, and `write` says so.
public final class HTTPStream: Sendable {
    struct State {
        var pending: [UInt8] = []
        var finished = false
        /// The connection the stream is the response of, once queued.
        var connection: OpaquePointer?
        /// Whether libmicrohttpd's reader parked (suspended) the connection for want of bytes: `write` resumes it.
        var parked = false
        /// libmicrohttpd is done with the response: the client went away, or the response ended.
        var released = false
    }
    /// `@unchecked Sendable`: the connection pointer is only used under the lock, while the stream is parked.
    struct Locked: @unchecked Sendable { var state = State() }

    private let locked = Mutex(Locked())
    public let bufferLimit: Int

    public init(bufferLimit: Int = 1 << 20) {
        self.bufferLimit = bufferLimit
    }

    /// Queues `bytes` for the client. False once the stream is over (finished, the client gone, or too slow to
    /// keep up): the caller should forget it.
    @discardableResult
    public func write(_ bytes: [UInt8]) -> Bool {
        locked.withLock { locked in
            guard !locked.state.finished, !locked.state.released else { return false }
            // A write always fits when the client has kept up, however large; one that has not read what waits
            // is cut off.
            guard locked.state.pending.count <= bufferLimit else {
                locked.state.pending = []
                locked.state.finished = true
                Self.unpark(&locked.state)
                return false
            }
            locked.state.pending += bytes
            Self.unpark(&locked.state)
            return true
        }
    }

    /// Ends the response once what is queued has gone out.
    public func finish() {
        locked.withLock { locked in
            locked.state.finished = true
            Self.unpark(&locked.state)
        }
    }

    /// Bytes queued and not yet taken by the connection.
    public var pendingBytes: Int {
        locked.withLock { $0.state.pending.count }
    }

    /// Whether the stream still takes bytes.
    public var isOpen: Bool {
        locked.withLock { !$0.state.finished && !$0.state.released }
    }

    private static func unpark(_ state: inout State) {
        guard state.parked, let connection = state.connection else { return }
        state.parked = false
        MHD_resume_connection(connection)
    }

    /// The stream became `connection`'s response.
    func attach(to connection: OpaquePointer) {
        locked.withLock { $0.state.connection = connection }
    }

    /// libmicrohttpd's content reader: copies out what is queued, or ends the response, or parks the connection
    /// (suspends it and returns 0) until the next `write`.
    func read(into buffer: UnsafeMutablePointer<CChar>, max: Int) -> Int {
        locked.withLock { locked in
            if !locked.state.pending.isEmpty {
                let count = min(max, locked.state.pending.count)
                locked.state.pending.withUnsafeBytes { bytes in
                    UnsafeMutableRawPointer(buffer).copyMemory(from: bytes.baseAddress!, byteCount: count)
                }
                locked.state.pending.removeFirst(count)
                return count
            }
            guard !locked.state.finished, let connection = locked.state.connection else {
                return -1  // MHD_CONTENT_READER_END_OF_STREAM
            }
            locked.state.parked = true
            MHD_suspend_connection(connection)
            return 0
        }
    }

    /// libmicrohttpd let go of the response.
    func released() {
        locked.withLock { locked in
            locked.state.released = true
            locked.state.parked = false
            locked.state.connection = nil
        }
    }
}
