// A warm worker's life without I/O (WarmWorkerStateMachine): the states it goes through and what it asks its
// owner to do at each event, with plain strings for requests.
import Testing

@testable import StatefnWorkers

@Suite(.timeLimit(.minutes(1))) struct WarmWorkerStateMachineTests {
    typealias Machine = WarmWorkerStateMachine<String>

    /// The actions as short names, for comparing whole sequences.
    func names(_ actions: [Machine.Action]) -> [String] {
        actions.map { action in
            switch action {
            case .send(let request): "send \(request)"
            case .armInitTimer: "arm init"
            case .cancelInitTimer: "cancel init"
            case .cancelDeadline: "cancel deadline"
            case .deliver(let request): "deliver \(request)"
            case .fail(let request, let failure): "fail \(request) \(failure)"
            case .resubmit(let request): "resubmit \(request)"
            case .becomeIdle(let answered): answered ? "idle after answer" : "idle"
            case .retired(let crashed, let beforeServing, let outcome):
                "retired\(crashed ? " crashed" : "")\(beforeServing ? " before serving" : "")\(outcome.map { " \($0)" } ?? "")"
            case .tearDown(let step): "tear down from \(step)"
            case .noteTimeout: "note timeout"
            case .noteRecycle: "note recycle"
            case .logViolation: "log"
            }
        }
    }

    @Test func servesRequestsOneAtATime() {
        var worker = Machine(needsReadyLine: false, maxRequests: 0)
        #expect(names(worker.start("a")) == ["send a"])
        #expect(worker.inFlight == "a" && !worker.isIdle)
        #expect(names(worker.line(isReady: false, validAnswer: true, truncated: false)) == ["cancel deadline", "idle after answer", "deliver a"])
        #expect(worker.isIdle)
        #expect(names(worker.send("b")) == ["send b"])
        #expect(names(worker.line(isReady: false, validAnswer: true, truncated: false)).last == "deliver b")
        #expect(worker.served == 2 && worker.answered == 2)
        // Asked to go by the pool, which already counts it gone: a clean exit is no crash.
        #expect(names(worker.stop()) == ["tear down from closeStdin"])
        #expect(names(worker.exited(clean: true, forMemory: false, stopping: false)) == ["cancel deadline", "cancel init"])
    }

    @Test func aReadyLineIsWaitedForWhenTheManifestAsksAndIgnoredOtherwise() {
        var strict = Machine(needsReadyLine: true, maxRequests: 0)
        #expect(names(strict.start("first")) == ["arm init"])
        #expect(strict.inFlight == nil, "the first request waits for the ready line")
        #expect(names(strict.line(isReady: true, validAnswer: false, truncated: false)) == ["cancel init", "send first"])
        #expect(strict.inFlight == "first")

        // Without init_timeout_ms the request goes at once, and a ready line that comes first is not its answer.
        var relaxed = Machine(needsReadyLine: false, maxRequests: 0)
        _ = relaxed.start("r")
        #expect(relaxed.line(isReady: true, validAnswer: false, truncated: false).isEmpty)
        #expect(names(relaxed.line(isReady: false, validAnswer: true, truncated: false)).last == "deliver r")
    }

    @Test func aWorkerThatDoesNotStartRightIsReplacedAndItsRequestFails() {
        var garbage = Machine(needsReadyLine: true, maxRequests: 0)
        _ = garbage.start("g")
        #expect(
            names(garbage.line(isReady: false, validAnswer: false, truncated: false))
                == ["cancel init", "log", "fail g notReady", "tear down from kill", "retired crashed before serving failed"])
        #expect(garbage.exited(clean: false, forMemory: false, stopping: false).allSatisfy {
            if case .retired = $0 { false } else { true }
        }, "ended on purpose: reported once")

        var slow = Machine(needsReadyLine: true, maxRequests: 0)
        _ = slow.start("s")
        #expect(
            names(slow.initTimedOut())
                == ["log", "fail s initTimedOut", "tear down from kill", "retired crashed before serving failed"])
    }

    @Test func aDeadlineTerminatesTheWorkerAndFailsItsRequest() {
        var worker = Machine(needsReadyLine: false, maxRequests: 0)
        _ = worker.start("slow")
        #expect(
            names(worker.deadlinePassed())
                == ["note timeout", "tear down from terminate", "retired before serving", "fail slow timedOut"])
        // Its answer, if it comes now, is nobody's.
        #expect(worker.line(isReady: false, validAnswer: true, truncated: false).isEmpty)
        #expect(names(worker.exited(clean: false, forMemory: false, stopping: false)) == ["cancel deadline", "cancel init"])
    }

    @Test func aBadAnswerOrMaxRequestsRetiresTheWorkerAfterDelivering() {
        var liar = Machine(needsReadyLine: false, maxRequests: 0)
        _ = liar.start("x")
        #expect(
            names(liar.line(isReady: false, validAnswer: false, truncated: true))
                == ["cancel deadline", "note recycle", "tear down from kill", "retired failed", "deliver x"])

        var limited = Machine(needsReadyLine: false, maxRequests: 2)
        _ = limited.start("1")
        _ = limited.line(isReady: false, validAnswer: true, truncated: false)
        _ = limited.send("2")
        #expect(
            names(limited.line(isReady: false, validAnswer: true, truncated: false))
                == ["cancel deadline", "note recycle", "tear down from closeStdin", "retired succeeded", "deliver 2"])
    }

    @Test func aCrashAfterServingIsACrashButNotAStartUpOne() {
        var worker = Machine(needsReadyLine: false, maxRequests: 0)
        _ = worker.start("a")
        _ = worker.line(isReady: false, validAnswer: true, truncated: false)
        _ = worker.send("b")
        #expect(
            names(worker.exited(clean: false, forMemory: false, stopping: false))
                == ["cancel deadline", "cancel init", "retired crashed failed", "fail b exited(forMemory: false)"])

        var never = Machine(needsReadyLine: false, maxRequests: 0)
        _ = never.start("c")
        #expect(names(never.exited(clean: false, forMemory: false, stopping: false)).contains("retired crashed before serving failed"))

        var hog = Machine(needsReadyLine: false, maxRequests: 0)
        _ = hog.start("m")
        #expect(
            names(hog.exited(clean: false, forMemory: true, stopping: false))
                == ["cancel deadline", "cancel init", "note recycle", "retired before serving failed", "fail m exited(forMemory: true)"])
    }

    /// Killed for memory_mb after it closed stdout (so already retiring): the pool still hears of the failure.
    @Test func aFailureAfterRetiringIsStillReported() {
        var worker = Machine(needsReadyLine: false, maxRequests: 0)
        _ = worker.start("m")
        #expect(names(worker.stdoutClosed()) == ["tear down from closeStdin", "retired before serving"])
        #expect(
            names(worker.exited(clean: false, forMemory: true, stopping: false))
                == ["cancel deadline", "cancel init", "note recycle", "retired before serving failed", "fail m exited(forMemory: true)"])
    }

    @Test func aCleanExitAfterServingRunsTheRacingRequestOnceMore() {
        var worker = Machine(needsReadyLine: false, maxRequests: 0)
        _ = worker.start("a")
        _ = worker.line(isReady: false, validAnswer: true, truncated: false)
        _ = worker.send("b")
        // It closed stdout and left with status 0: it served one request and leaves, before reading "b".
        #expect(names(worker.stdoutClosed()) == ["tear down from closeStdin", "retired"])
        #expect(names(worker.exited(clean: true, forMemory: false, stopping: false)) == ["cancel deadline", "cancel init", "resubmit b"])
    }

    @Test func aStoppingPoolFailsTheRequestInFlightAsShuttingDown() {
        var worker = Machine(needsReadyLine: false, maxRequests: 0)
        _ = worker.start("a")
        #expect(names(worker.exited(clean: false, forMemory: false, stopping: true)) == ["cancel deadline", "cancel init", "retired before serving", "fail a shuttingDown"])
        #expect(worker.exited(clean: false, forMemory: false, stopping: true).isEmpty, "exits once")
    }
}
