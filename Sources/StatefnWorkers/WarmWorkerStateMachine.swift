// One warm worker's life as pure state, like the pool's (PoolStateMachine): it does no I/O, keeps no timer and
// reads no clock. Each event returns the actions its owner (`WarmWorker`) carries out: write a request, arm or
// cancel a timer, hand over or fail a request, report to the pool, tear the process down. Tests drive it with
// plain values.
//
//   starting ──{"ready":true}──▶ idle ◀──answer──┐
//      │                          │ send         │
//      │ (no ready line needed) ──┴────────▶ busy ┘
//      │                                      │
//      └──── broken line, init timeout ──▶ retiring ◀── timeout, bad answer, max_requests, stop, stdout closed
//                                             │
//                       (any state) ──exit──▶ exited
struct WarmWorkerStateMachine<Request> {
    enum State {
        /// Spawned; with `init_timeout_ms` it must say `{"ready":true}` before its first request, which waits here.
        case starting(waiting: Request?)
        /// Ready for a request.
        case idle
        /// A request in flight.
        case busy(Request)
        /// Out of the pool's count and ending; the request it still had, if any, ends with its exit.
        case retiring(Request?)
        case exited
    }

    /// What went wrong with a request, for the owner to say in its error.
    enum Failure: Equatable {
        /// Its first line was not `{"ready":true}`.
        case notReady
        /// No `{"ready":true}` within `init_timeout_ms`.
        case initTimedOut
        /// No answer within `timeout_ms`.
        case timedOut
        /// It exited before answering; `forMemory` when the kernel or the RSS watch killed it for `memory_mb`.
        case exited(forMemory: Bool)
        case shuttingDown
    }

    enum Action {
        /// Write the request to stdin and arm its deadline.
        case send(Request)
        case armInitTimer
        case cancelInitTimer
        case cancelDeadline
        /// The line that just arrived is this request's answer (valid or not): hand it over.
        case deliver(Request)
        case fail(Request, Failure)
        /// It left cleanly after serving, before reading this request: run it once more, on another worker.
        case resubmit(Request)
        /// Ready for the next request: tell the pool (`answered`: it just answered one).
        case becomeIdle(answered: Bool)
        /// Out of the pool's count; `outcome` is how its request ended, if it had one.
        case retired(crashed: Bool, beforeServing: Bool, outcome: PoolStateMachine<Request>.Outcome?)
        case tearDown(Teardown)
        case noteTimeout
        case noteRecycle
        /// It broke the protocol; say why in the log.
        case logViolation(String)
    }

    private(set) var state: State
    /// Requests written to it; `answered` of them were answered.
    private(set) var served = 0
    private(set) var answered = 0
    private let maxRequests: Int
    private var sawFirstLine = false
    /// The gateway ended it (a deadline, a bad answer, a recycle, a stop): its exit is not a crash.
    private var endedOnPurpose = false

    /// `needsReadyLine`: the manifest sets `init_timeout_ms`. `maxRequests` 0 is no limit.
    init(needsReadyLine: Bool, maxRequests: Int) {
        state = needsReadyLine ? .starting(waiting: nil) : .idle
        self.maxRequests = maxRequests
    }

    var isIdle: Bool { if case .idle = state { true } else { false } }

    /// The request whose answer the next line is.
    var inFlight: Request? { if case .busy(let request) = state { request } else { nil } }

    /// Right after the spawn, with the first request or with nil for a worker started ahead of demand.
    mutating func start(_ request: Request?) -> [Action] {
        if case .starting = state {
            state = .starting(waiting: request)
            return [.armInitTimer]
        }
        guard let request else { return [.becomeIdle(answered: false)] }
        return send(request)
    }

    /// The pool picked it, idle, for `request`.
    mutating func send(_ request: Request) -> [Action] {
        precondition(isIdle, "a warm worker got a request while not idle")
        state = .busy(request)
        served += 1
        return [.send(request)]
    }

    /// A caller wrote `request` straight to its stdin while it was idle (`WorkerProcess.writeDirect`); its owner
    /// arms the deadline from the time of the write.
    mutating func sentDirectly(_ request: Request) {
        served += 1
        switch state {
        case .idle: state = .busy(request)
        // Written just before it began to end (it closed stdout): the request ends with it, retried or failed.
        case .retiring(nil): state = .retiring(request)
        default: preconditionFailure("a direct write to a warm worker that was not idle")
        }
    }

    /// A stdout line. `isReady`: it is `{"ready":true}`. `validAnswer`: checked against the request in flight
    /// (`inFlight`), whether it is a good answer to it; `truncated`: it was over `max_response_bytes`.
    mutating func line(isReady: Bool, validAnswer: Bool, truncated: Bool) -> [Action] {
        let first = !sawFirstLine
        sawFirstLine = true
        if first && isReady {
            // Optional, so ignored by a worker that needs none, even with its first request already written.
            guard case .starting(let waiting) = state else { return [] }
            state = .idle
            guard let waiting else { return [.cancelInitTimer, .becomeIdle(answered: false)] }
            return [.cancelInitTimer] + send(waiting)
        }
        switch state {
        case .starting(let waiting):
            // It never got going: a start-up crash, for the backoff and the crash loop.
            return [.cancelInitTimer, .logViolation("worker wrote something other than {\"ready\":true} first; replacing it")]
                + (waiting.map { [.fail($0, .notReady)] } ?? [])
                + retire(.kill, crashed: true, outcome: waiting == nil ? nil : .failed)
        case .idle:
            return [.logViolation("worker wrote a line with no request in flight; replacing it")] + retire(.kill)
        case .busy(let request):
            answered += 1
            state = .idle
            var actions: [Action] = [.cancelDeadline]
            if !validAnswer {
                if truncated { actions.append(.noteRecycle) }
                actions += retire(.kill, outcome: .failed)
            } else if maxRequests > 0 && served >= maxRequests {
                actions += [.noteRecycle] + retire(.closeStdin, outcome: .succeeded)
            } else {
                actions.append(.becomeIdle(answered: true))
            }
            return actions + [.deliver(request)]
        case .retiring, .exited:
            return []
        }
    }

    /// No `{"ready":true}` within `init_timeout_ms`.
    mutating func initTimedOut() -> [Action] {
        guard case .starting(let waiting) = state else { return [] }
        return [.logViolation("worker did not print {\"ready\":true} within init_timeout_ms; killing it")]
            + (waiting.map { [.fail($0, .initTimedOut)] } ?? [])
            + retire(.kill, crashed: true, outcome: waiting == nil ? nil : .failed)
    }

    /// The request in flight passed its deadline. Slow is not broken: a timeout is not weighed in the failure
    /// ratio (a caller whose requests are slow must not switch the function off for everyone); the deadline and
    /// the queue's limits already bound what slow requests cost.
    mutating func deadlinePassed() -> [Action] {
        guard case .busy(let request) = state else { return [] }
        state = .idle
        return [.noteTimeout] + retire(.terminate) + [.fail(request, .timedOut)]
    }

    /// It closed stdout: no answer can come any more. It gets the teardown's grace to exit on its own, which tells
    /// a clean exit (a worker that serves one request and leaves) from a crash.
    mutating func stdoutClosed() -> [Action] {
        switch state {
        case .starting(let waiting): return retire(.closeStdin, onPurpose: false, keeping: waiting)
        case .busy(let request): return retire(.closeStdin, onPurpose: false, keeping: request)
        case .idle: return retire(.closeStdin, onPurpose: false)
        case .retiring, .exited: return []
        }
    }

    /// The pool let it go: idle too long, or an old generation of the function's code.
    mutating func stop() -> [Action] {
        guard case .idle = state else { return [] }
        // The pool has already taken it out of its count: it asked.
        endedOnPurpose = true
        state = .retiring(nil)
        return [.tearDown(.closeStdin)]
    }

    /// It has exited and been reaped. `clean`: status 0. `forMemory`: killed for `memory_mb`. `stopping`: the
    /// whole pool is shutting down.
    mutating func exited(clean: Bool, forMemory: Bool, stopping: Bool) -> [Action] {
        let request: Request?
        let wasRetiring: Bool
        switch state {
        case .starting(let waiting): (request, wasRetiring) = (waiting, false)
        case .busy(let inFlight): (request, wasRetiring) = (inFlight, false)
        case .idle: (request, wasRetiring) = (nil, false)
        case .retiring(let kept): (request, wasRetiring) = (kept, true)
        case .exited: return []
        }
        state = .exited
        let hadServed = answered > 0
        // A worker that leaves cleanly after answering before may not have read a request that raced its exit;
        // commands are deterministic and nothing was committed, so it runs once more on another worker.
        let leftCleanAfterServing = clean && hadServed && request != nil && !stopping
        let crashed = !stopping && !forMemory && !endedOnPurpose && !(request == nil && clean) && !leftCleanAfterServing
        var actions: [Action] = [.cancelDeadline, .cancelInitTimer]
        if forMemory { actions.append(.noteRecycle) }
        // Reported once more if it was already retiring but has news: a crash, or a request it failed (killed for
        // memory_mb after closing stdout, say). The pool takes a repeat for a worker it no longer counts.
        let failed = request != nil && !leftCleanAfterServing && !stopping
        if !wasRetiring || crashed || failed {
            actions.append(.retired(crashed: crashed, beforeServing: !hadServed, outcome: failed ? .failed : nil))
        }
        guard let request else { return actions }
        if leftCleanAfterServing { return actions + [.resubmit(request)] }
        return actions + [.fail(request, stopping ? .shuttingDown : .exited(forMemory: forMemory))]
    }

    /// Takes it out of the pool's count, once, and starts its teardown. `keeping`: the request in flight stays
    /// with it, to end with its exit.
    private mutating func retire(
        _ step: Teardown, crashed: Bool = false, outcome: PoolStateMachine<Request>.Outcome? = nil,
        onPurpose: Bool = true, keeping request: Request? = nil
    ) -> [Action] {
        if onPurpose { endedOnPurpose = true }
        if case .retiring = state { return [.tearDown(step)] }
        state = .retiring(request)
        return [.tearDown(step), .retired(crashed: crashed, beforeServing: answered == 0, outcome: outcome)]
    }
}
