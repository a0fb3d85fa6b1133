// The front door's public face. `ServerCore` does the work; this wrapper exists so that dropping the last reference
// stops the daemon, even though the daemon itself keeps the core alive while it runs.
import Logging

public typealias HTTPHandler = @Sendable (HTTPRequest) async -> HTTPResponse

/// The front door: libmicrohttpd with its own thread pool and epoll. Each complete request is handed to `handler`,
/// which starts on the libmicrohttpd thread (`Task.immediate`); one that finishes without waiting is answered at
/// once, otherwise the connection is suspended and resumed when the answer is ready.
public final class HTTPServer: Sendable {
    let core: ServerCore

    /// `executor`, when given, is the task executor the handlers' tasks prefer (see `Task.immediate`).
    public init(
        configuration: HTTPServerConfiguration, logger: Logger, executor: (any TaskExecutor)? = nil,
        handler: @escaping HTTPHandler
    ) {
        core = ServerCore(configuration: configuration, logger: logger, executor: executor, handler: handler)
    }

    deinit { core.stopNow() }

    /// Binds and starts serving. Throws if the address is taken or invalid, or the server was started before.
    public func start() throws(HTTPServerError) { try core.start() }

    /// The bound port (useful with port 0); 0 before `start()`.
    public var port: Int { core.port }

    /// Stops accepting new connections; requests in flight go on. Responses from now on carry `Connection: close`.
    public func quiesce() { core.quiesce() }

    /// Quiesces, waits up to `gracePeriod` for requests in flight to be answered, then stops the daemon. Handlers
    /// still running then have their clients answered 503; `beforeCutoff` runs just before, so that the caller can
    /// make sure none of those handlers will still do what a 503 says was not done.
    public func stop(gracePeriod: Duration, beforeCutoff: @Sendable () async -> Void = {}) async {
        await core.stop(gracePeriod: gracePeriod, beforeCutoff: beforeCutoff)
    }
}
