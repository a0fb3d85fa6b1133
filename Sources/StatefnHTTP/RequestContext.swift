// One request's state across libmicrohttpd's calls to the access handler, from its headers to its response.
import Synchronization

/// Created when a request's headers are in and released by the completion callback; libmicrohttpd holds it in the
/// connection's `con_cls` through `Unmanaged`.
///
/// `@unchecked Sendable`: libmicrohttpd calls the access handler for one connection from one thread at a time, and
/// only that thread touches the fields, except two. `handlerResponse` is written by the handler's Task before it
/// sets `handoff`, and read by the thread the handoff names. `response` is written by whoever takes the context out
/// of `ServerCore.state.suspended` under its lock (the handler's Task, the dispatching thread, or `stop`), just
/// before resuming the connection; libmicrohttpd's resume mutex orders the write before the access handler's next
/// call, which reads it.
final class RequestContext: @unchecked Sendable {
    enum Phase {
        /// Reading the body.
        case receiving
        /// The body went over the limit: what is left of it is read and dropped (up to the limit again), then 413
        /// is answered.
        case overLimit
        /// The connection is suspended while the handler runs.
        case handling
        /// A response is queued; nothing more to do.
        case answered
    }

    let connection: OpaquePointer
    let method: String
    let path: String
    let headers: [(name: String, value: String)]
    let requestID: String
    var body: [UInt8] = []
    /// Body bytes read so far, kept or dropped.
    var received = 0
    var phase = Phase.receiving
    var response: HTTPResponse?
    /// Who answers: the thread that dispatched the handler, if the handler finished before the connection was
    /// suspended, or the handler's Task, by resuming it. `Handoff` values; the exchange orders `handlerResponse`.
    let handoff = Atomic<UInt8>(Handoff.running)
    /// The handler's response, written before `handoff` becomes `finished`.
    var handlerResponse: HTTPResponse?

    enum Handoff {
        static let running: UInt8 = 0
        static let suspended: UInt8 = 1
        static let finished: UInt8 = 2
    }

    init(
        connection: OpaquePointer, method: String, path: String, headers: [(name: String, value: String)],
        requestID: String
    ) {
        self.connection = connection
        self.method = method
        self.path = path
        self.headers = headers
        self.requestID = requestID
    }
}
