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
        /// After MHD_quiesce_daemon the socket is ours to close, but only once the daemon has stopped.
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
    }

    let configuration: HTTPServerConfiguration
    let logger: Logger
    let handler: HTTPHandler
    let state = Mutex(State())
    /// Requests whose headers are in and whose completion callback has not run yet.
    let activeRequests = Atomic<Int>(0)
    /// Set by `quiesce`, so that keep-alive clients are told to go elsewhere.
    let quiescing = Atomic<Bool>(false)

    init(configuration: HTTPServerConfiguration, logger: Logger, handler: @escaping HTTPHandler) {
        self.configuration = configuration
        self.logger = logger
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
            let flags =
                MHD_USE_INTERNAL_POLLING_THREAD.rawValue | MHD_USE_EPOLL.rawValue | MHD_ALLOW_SUSPEND_RESUME.rawValue
                | MHD_USE_ERROR_LOG.rawValue
            guard
                let pointer = cmhd_start_daemon(
                    flags, socket.descriptor, UInt32(max(1, configuration.threads)),
                    UInt32(max(0, configuration.connectionTimeoutSeconds)), 4096, accessHandler, requestCompleted,
                    logMessage, core.toOpaque())
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
            if descriptor >= 0 { shutdown(descriptor, Int32(SHUT_RDWR)) }
            daemon.quiesced = true
            state.lifecycle = .running(daemon)
        }
        quiescing.store(true, ordering: .relaxed)
    }

    func stop(gracePeriod: Duration) async {
        quiesce()
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: gracePeriod)
        while activeRequests.load(ordering: .relaxed) > 0, clock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        guard let daemon = detachDaemon() else { return }
        // MHD_stop_daemon joins the daemon's threads, so it runs off Swift's cooperative pool.
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                self.destroy(daemon)
                continuation.resume()
            }
        }
    }

    /// Stops at once, for `HTTPServer`'s deinit.
    func stopNow() {
        quiesce()
        if let daemon = detachDaemon() { destroy(daemon) }
    }

    /// Marks the server stopped and answers 503 to every connection still waiting on its handler, resuming it, so
    /// that the daemon can be stopped.
    private func detachDaemon() -> Daemon? {
        state.withLock { state in
            guard case .running(let daemon) = state.lifecycle else {
                state.lifecycle = .stopped
                return nil
            }
            state.lifecycle = .stopped
            for context in state.suspended.values {
                context.response = .problem(
                    status: 503, detail: "The server is shutting down.", requestID: context.requestID)
                MHD_resume_connection(context.connection)
            }
            state.suspended = [:]
            return daemon
        }
    }

    private func destroy(_ daemon: Daemon) {
        MHD_stop_daemon(daemon.pointer)
        if daemon.quiesced { close(daemon.listenSocket.descriptor) }
        Unmanaged.passUnretained(self).release()
        logger.info("stopped", metadata: ["port": "\(daemon.listenSocket.port)"])
    }
}
