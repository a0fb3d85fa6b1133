// The server's lifecycle: binding, starting libmicrohttpd, quiescing and stopping it without leaving a connection
// suspended (libmicrohttpd panics if one is).
import CMicroHTTPD
import Dispatch
import Glibc
import Logging
import Synchronization

final class ServerCore: Sendable {
    /// `@unchecked Sendable`: the pointer is used under `state`'s lock, or, once `detachDaemon` has taken it out of
    /// the state, by the one caller that destroys it.
    struct Daemon: @unchecked Sendable {
        let pointer: OpaquePointer
        let listenSocket: ListenSocket
        /// After MHD_quiesce_daemon the socket is ours to close, but only once the daemon has stopped; before it,
        /// MHD_stop_daemon closes it.
        var quiesced = false
    }

    enum Lifecycle {
        case idle
        case running(Daemon)
        case stopped
    }

    struct State {
        var lifecycle = Lifecycle.idle
        /// Connections suspended while their handler runs. Each must be resumed exactly once: by its Task, or by
        /// `stop` with a 503 if the Task is still running when the daemon goes.
        var suspended: [ObjectIdentifier: RequestContext] = [:]
        /// Streaming responses libmicrohttpd still holds; `stop` ends each, so that none is left parked.
        var streams: [ObjectIdentifier: HTTPStream] = [:]
    }

    let configuration: HTTPServerConfiguration
    let logger: Logger
    let handler: HTTPHandler
    let executor: (any TaskExecutor)?
    let state = Mutex(State())
    /// Requests whose headers are in and whose completion callback has not run yet.
    let activeRequests = Atomic<Int>(0)
    /// Set by `quiesce`, so that keep-alive clients are told to go elsewhere.
    let quiescing = Atomic<Bool>(false)
    /// Set once the daemon is about to stop: no connection may be suspended or resumed by a request after it.
    let stopping = Atomic<Bool>(false)
    /// Threads between checking `stopping` and finishing a suspend or resume. `stop` sets `stopping`, then waits
    /// for this to reach 0, so it never stops the daemon under a connection that is being suspended or resumed.
    let changingSuspension = Atomic<Int>(0)
    /// Request heads' deadlines, for the header timeout.
    let deadlines: ConnectionDeadlines

    init(
        configuration: HTTPServerConfiguration, logger: Logger, executor: (any TaskExecutor)?,
        handler: @escaping HTTPHandler
    ) {
        self.configuration = configuration
        deadlines = ConnectionDeadlines(timeoutSeconds: configuration.headerTimeoutSeconds, logger: logger)
        self.logger = logger
        self.executor = executor
        self.handler = handler
    }

    var port: Int {
        state.withLock { state in
            if case .running(let daemon) = state.lifecycle { daemon.listenSocket.port } else { 0 }
        }
    }

    func start() throws(HTTPServerError) {
        try state.withLock { (state: inout State) throws(HTTPServerError) in
            guard case .idle = state.lifecycle else { throw HTTPServerError(message: "the server was already started") }
            let socket = try ListenSocket.open(host: configuration.host, port: configuration.port)
            // The daemon's callbacks reach the core through this reference; it is released after MHD_stop_daemon.
            let core = Unmanaged.passRetained(self)
            // MHD_USE_TURBO: with epoll, a new connection is read at once (optimistically) rather than first added
            // to epoll and read on its readiness event, and some shutdown() calls before close() are skipped; close()
            // sends the same FIN when nothing is left unread, and a body over the limit is read and dropped first,
            // up to its bound. About 6% less CPU per request (bench/RESULTS.md).
            let flags =
                MHD_USE_INTERNAL_POLLING_THREAD.rawValue | MHD_USE_EPOLL.rawValue | MHD_ALLOW_SUSPEND_RESUME.rawValue
                | MHD_USE_ERROR_LOG.rawValue | MHD_USE_TURBO.rawValue
            guard
                let pointer = cmhd_start_daemon(
                    flags, socket.descriptor, UInt32(max(1, configuration.threads)),
                    UInt32(max(0, configuration.connectionTimeoutSeconds)), 4096,
                    UInt32(max(0, configuration.maxConnectionsPerAddress)),
                    UInt32(configuration.maxQueryParameters + 1), accessHandler, requestCompleted,
                    connectionNotified, logMessage, core.toOpaque())
            else {
                core.release()
                close(socket.descriptor)
                throw HTTPServerError(
                    message: "cannot start the HTTP server on \(configuration.host):\(socket.port): libmicrohttpd refused")
            }
            state.lifecycle = .running(Daemon(pointer: pointer, listenSocket: socket))
        }
        logger.info("listening", metadata: ["host": "\(configuration.host)", "port": "\(port)"])
    }

    func quiesce() {
        state.withLock { state in
            guard case .running(var daemon) = state.lifecycle, !daemon.quiesced else { return }
            let descriptor = MHD_quiesce_daemon(daemon.pointer)
            // Refuse new connections at once instead of leaving them in the backlog until the daemon stops.
            guard descriptor >= 0 else { return }
            shutdown(descriptor, Int32(SHUT_RDWR))
            daemon.quiesced = true
            state.lifecycle = .running(daemon)
        }
        quiescing.store(true, ordering: .relaxed)
    }

    func stop(gracePeriod: Duration, beforeCutoff: @Sendable () async -> Void) async {
        quiesce()
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: gracePeriod)
        while activeRequests.load(ordering: .relaxed) > 0, clock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        if activeRequests.load(ordering: .relaxed) > 0 {
            await beforeCutoff()
            // The handlers that `beforeCutoff` waited for hand their responses over within microseconds, with no
            // suspension point in between; this is margin, not the guarantee.
            try? await Task.sleep(for: .milliseconds(20))
        }
        // MHD_stop_daemon joins the daemon's threads, so it runs off Swift's cooperative pool.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                self.stopNow()
                continuation.resume()
            }
        }
    }

    /// Stops at once (also for `HTTPServer`'s deinit). Blocks while the daemon's threads finish.
    func stopNow() {
        quiesce()
        guard let (daemon, answered) = detachDaemon() else { return }
        // Give the threads a moment to write the 503s before the daemon closes every connection.
        var waited = 0
        while answered > 0, activeRequests.load(ordering: .relaxed) > 0, waited < 1000 {
            usleep(1000)
            waited += 1
        }
        destroy(daemon)
    }

    /// Marks the server stopped and answers 503 to every connection still waiting on its handler, resuming it, so
    /// that the daemon can be stopped. Returns the daemon and how many connections got a 503.
    private func detachDaemon() -> (Daemon, Int)? {
        stopping.store(true, ordering: .sequentiallyConsistent)
        // Only a few instructions and one syscall away from done: wait for them without sleeping.
        while changingSuspension.load(ordering: .sequentiallyConsistent) > 0 { sched_yield() }
        let (daemon, waiting, streams) = state.withLock { state in
            let daemon: Daemon? = if case .running(let daemon) = state.lifecycle { daemon } else { nil }
            state.lifecycle = .stopped
            defer { state.suspended = [:] }
            return (daemon, Array(state.suspended.values), Array(state.streams.values))
        }
        for context in waiting {
            context.response = .problem(
                status: 503, detail: "The server is shutting down.", requestID: context.requestID,
                headers: [(name: "Retry-After", value: "1")])
            MHD_resume_connection(context.connection)
        }
        // A stream ends cleanly (its last chunk), and its connection, if parked, is resumed to send it.
        for stream in streams { stream.finish() }
        return daemon.map { ($0, waiting.count + streams.count) }
    }

    private func destroy(_ daemon: Daemon) {
        MHD_stop_daemon(daemon.pointer)
        if daemon.quiesced { close(daemon.listenSocket.descriptor) }
        logger.info("stopped", metadata: ["port": "\(daemon.listenSocket.port)"])
        Unmanaged.passUnretained(self).release()
    }
}
