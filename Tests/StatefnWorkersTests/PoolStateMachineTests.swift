import Testing

@testable import StatefnWorkers

/// The pool without processes: every event and the action it asks for.
@Suite(.timeLimit(.minutes(1))) struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine<String>

    @Test func spawnsUpToTheLimitThenQueuesThenRefuses() {
        var pool = Machine(maxWorkers: 2, maxQueue: 1)
        guard case .spawn(let first, for: "a") = pool.request("a") else { Issue.record("expected spawn"); return }
        guard case .spawn(let second, for: "b") = pool.request("b") else { Issue.record("expected spawn"); return }
        #expect(first != second)
        guard case .armQueueTimer = pool.request("c") else { Issue.record("expected queueing"); return }
        guard case .reject("d", .queueFull) = pool.request("d") else { Issue.record("expected queue full"); return }
        #expect(pool.counts == .init(busy: 2, idle: 0, queued: 1))
    }

    @Test func aFinishedWorkerTakesTheOldestWaitingRequestThenIdles() {
        var pool = Machine(maxWorkers: 1, maxQueue: 5)
        guard case .spawn(let worker, for: "a") = pool.request("a") else { Issue.record("expected spawn"); return }
        _ = pool.request("b")
        _ = pool.request("c")
        guard case .run("b", on: worker) = pool.workerFinished(worker) else { Issue.record("expected b"); return }
        guard case .run("c", on: worker) = pool.workerFinished(worker) else { Issue.record("expected c"); return }
        guard case .none = pool.workerFinished(worker) else { Issue.record("expected idle"); return }
        #expect(pool.counts == .init(busy: 0, idle: 1, queued: 0))
        guard case .run("d", on: worker) = pool.request("d") else { Issue.record("expected reuse"); return }
    }

    @Test func theMostRecentlyUsedIdleWorkerIsReusedFirst() {
        var pool = Machine(maxWorkers: 2, maxQueue: 0)
        guard case .spawn(let one, _) = pool.request("a"), case .spawn(let two, _) = pool.request("b") else {
            Issue.record("expected two spawns")
            return
        }
        _ = pool.workerFinished(one)
        _ = pool.workerFinished(two)
        guard case .run(_, on: two) = pool.request("c") else { Issue.record("expected the warmest worker"); return }
    }

    @Test func aRetiredWorkersSlotServesTheQueue() {
        var pool = Machine(maxWorkers: 1, maxQueue: 5)
        guard case .spawn(let worker, _) = pool.request("a") else { Issue.record("expected spawn"); return }
        _ = pool.request("b")
        guard case .spawn(let replacement, for: "b")? = pool.workerRetired(worker).first else {
            Issue.record("expected a replacement for b")
            return
        }
        #expect(replacement != worker)
        #expect(pool.workerRetired(worker).isEmpty, "retiring twice must do nothing")
        #expect(pool.workerRetired(replacement).isEmpty, "nothing waits")
        #expect(pool.counts == .init(busy: 0, idle: 0, queued: 0))
    }

    @Test func anIdleWorkerCanRetire() {
        var pool = Machine(maxWorkers: 1, maxQueue: 0)
        guard case .spawn(let worker, _) = pool.request("a") else { Issue.record("expected spawn"); return }
        _ = pool.workerFinished(worker)
        _ = pool.workerRetired(worker)
        #expect(pool.counts == .init(busy: 0, idle: 0, queued: 0))
        guard case .spawn = pool.request("b") else { Issue.record("expected a new worker"); return }
    }

    @Test func queueTimeoutRemovesOnlyAWaitingRequest() {
        var pool = Machine(maxWorkers: 1, maxQueue: 5)
        guard case .spawn(let worker, _) = pool.request("a") else { Issue.record("expected spawn"); return }
        guard case .armQueueTimer(let b) = pool.request("b"), case .armQueueTimer(let c) = pool.request("c") else {
            Issue.record("expected queueing")
            return
        }
        guard case .reject("b", .queueTimedOut) = pool.queueTimedOut(ticket: b) else { Issue.record("b"); return }
        guard case .run("c", on: worker) = pool.workerFinished(worker) else { Issue.record("c runs"); return }
        guard case .none = pool.queueTimedOut(ticket: c) else { Issue.record("c already left the queue"); return }
    }

    @Test func shutdownHandsBackTheQueueAndRefusesNewWork() {
        var pool = Machine(maxWorkers: 1, maxQueue: 5)
        guard case .spawn(let worker, _) = pool.request("a") else { Issue.record("expected spawn"); return }
        _ = pool.request("b")
        _ = pool.request("c")
        #expect(pool.shutdown() == ["b", "c"])
        guard case .reject("d", .shuttingDown) = pool.request("d") else { Issue.record("expected refusal"); return }
        #expect(pool.workerRetired(worker).isEmpty, "no respawn while stopping")
    }

    // MARK: With a fake clock

    typealias Limits = Machine.Limits

    /// The spawned worker's id, or nil (recording an issue) if the action is not a spawn.
    func spawned(_ action: Machine.Action?, for request: String? = nil) -> Int? {
        guard case .spawn(let worker, let sent)? = action, sent == request else {
            Issue.record("expected a spawn for \(request ?? "nothing"), got \(String(describing: action))")
            return nil
        }
        return worker
    }

    @Test func minWorkersStartAheadOfDemandAndStayThroughIdleTimeouts() throws {
        var pool = Machine(Limits(maxWorkers: 4, maxQueue: 10, minWorkers: 2, idleTimeoutMs: 1_000))
        let started = pool.tick(now: 0)
        #expect(started.count == 2)
        let ids = try started.map { try #require(spawned($0)) }
        #expect(pool.tick(now: 10).isEmpty, "still starting: no more spawns")
        for id in ids { _ = pool.workerFinished(id, now: 100) }
        #expect(pool.counts == .init(busy: 0, idle: 2, queued: 0))
        // A burst grows the pool; after the idle timeout it shrinks back to min_workers, oldest idle first.
        guard case .run("a", on: _) = pool.request("a", now: 200), case .run("b", on: _) = pool.request("b", now: 200)
        else { Issue.record("expected the warm workers"); return }
        let third = try #require(spawned(pool.request("c", now: 200), for: "c"))
        #expect(pool.statistics.coldStarts == 3)
        for id in ids + [third] { _ = pool.workerFinished(id, now: 300) }
        #expect(pool.tick(now: 1_299).isEmpty)
        let stopped = pool.tick(now: 1_300)
        #expect(stopped.count == 1)
        guard case .stop? = stopped.first else { Issue.record("expected a stop"); return }
        #expect(pool.counts == .init(busy: 0, idle: 2, queued: 0))
        #expect(pool.tick(now: 60_000).isEmpty, "min_workers stay")
    }

    @Test func scaleToZeroWithoutMinWorkers() throws {
        var pool = Machine(Limits(maxWorkers: 2, maxQueue: 10, minWorkers: 0, idleTimeoutMs: 500))
        #expect(pool.tick(now: 0).isEmpty)
        let worker = try #require(spawned(pool.request("a", now: 0), for: "a"))
        _ = pool.workerFinished(worker, now: 50)
        guard case .stop(worker)? = pool.tick(now: 550).first else { Issue.record("expected the worker to stop"); return }
        #expect(pool.counts == .init(busy: 0, idle: 0, queued: 0))
    }

    @Test func crashesBackOffExponentiallyThenACrashLoopRefusesUntilTheCoolDown() throws {
        var pool = Machine(Limits(maxWorkers: 1, maxQueue: 10))
        var now = 0
        var first = try #require(spawned(pool.request("r0", now: now), for: "r0"))
        var backoff = CrashPolicy.firstBackoffMs
        for round in 1..<CrashPolicy.loopCrashes {
            #expect(pool.workerRetired(first, crashed: true, now: now).isEmpty)
            // Within the backoff a request waits rather than spawning at once.
            guard case .armQueueTimer = pool.request("r\(round)", now: now) else { Issue.record("expected a wait"); return }
            #expect(pool.tick(now: now + backoff - 1).isEmpty)
            first = try #require(spawned(pool.tick(now: now + backoff).first, for: "r\(round)"))
            now += backoff
            backoff *= 2
        }
        _ = pool.request("waiting", now: now)
        let refused = pool.workerRetired(first, crashed: true, now: now)
        guard case .reject("waiting", .unhealthy(let retryAfter, _))? = refused.first else {
            Issue.record("the waiting request is refused: \(refused)")
            return
        }
        #expect(retryAfter == CrashPolicy.coolDownMs)
        guard case .reject("x", .unhealthy(let later, _)) = pool.request("x", now: now + 1_000) else {
            Issue.record("expected unhealthy")
            return
        }
        #expect(later == CrashPolicy.coolDownMs - 1_000)
        #expect(pool.statistics.crashes == CrashPolicy.loopCrashes)
        // After the cool-down it tries again at once.
        #expect(spawned(pool.request("y", now: now + CrashPolicy.coolDownMs), for: "y") != nil)
    }

    @Test func aWorkerThatServedAndThenCrashedIsReplacedAtOnceAndNeverTripsTheBreaker() throws {
        var pool = Machine(Limits(maxWorkers: 1, maxQueue: 10))
        var now = 0
        var worker = try #require(spawned(pool.request("r0", now: now), for: "r0"))
        _ = pool.workerFinished(worker, now: now)
        // Crashing on its 50th request, again and again: 2% of requests fail, and each replacement is at once.
        for round in 1...40 {
            for served in 1..<50 {
                now += 1
                guard case .run = pool.request("r\(round).\(served)", now: now) else {
                    Issue.record("round \(round): refused at request \(served)")
                    return
                }
                _ = pool.workerFinished(worker, now: now)
            }
            _ = pool.request("crash\(round)", now: now)
            _ = pool.request("next\(round)", now: now)
            let actions = pool.workerRetired(worker, crashed: true, beforeServing: false, outcome: .failed, now: now)
            worker = try #require(spawned(actions.first, for: "next\(round)"), "replaced at once: \(actions)")
            _ = pool.workerFinished(worker, now: now)
        }
        #expect(pool.unhealthyUntil == nil)
        #expect(pool.statistics.crashes == 40)
    }

    @Test func mostRecentRequestsFailingTripsTheBreaker() throws {
        var pool = Machine(Limits(maxWorkers: 4, maxQueue: 10))
        var now = 0
        var worker = try #require(spawned(pool.request("a", now: now), for: "a"))
        _ = pool.workerFinished(worker, now: now)
        // Every other request fails: a majority is not reached, so it keeps serving.
        for index in 0..<20 {
            now += 10
            guard case .run(_, let on) = pool.request("h\(index)", now: now) else {
                Issue.record("refused at \(index)")
                return
            }
            worker = on
            if index % 2 == 0 {
                _ = pool.workerFinished(worker, now: now)
            } else {
                let actions = pool.workerRetired(worker, crashed: true, beforeServing: false, outcome: .failed, now: now)
                #expect(actions.isEmpty)
                worker = try #require(spawned(pool.request("respawn\(index)", now: now), for: "respawn\(index)"))
                _ = pool.workerFinished(worker, now: now)
            }
        }
        #expect(pool.unhealthyUntil == nil, "half failing is not most")
        // Then most fail, every worker crashing on its request: refused, and the reason says so.
        for index in 0..<8 {
            let next: Int
            switch pool.request("f\(index)", now: now + index) {
            case .run(_, let on): next = on
            case .spawn(let id, _): next = id
            default: return
            }
            _ = pool.workerRetired(next, crashed: true, beforeServing: false, outcome: .failed, now: now + index)
        }
        let until = try #require(pool.unhealthyUntil)
        #expect((now + CrashPolicy.coolDownMs...now + 7 + CrashPolicy.coolDownMs).contains(until))
        guard case .reject("z", .unhealthy(_, .failingRequests(let failed, let total))) = pool.request("z", now: now + 8)
        else {
            Issue.record("expected a refusal")
            return
        }
        #expect(failed > total / 2 && total == CrashPolicy.outcomeWindow, "\(failed) of \(total)")
        // After the cool-down it serves again, with a clean slate.
        if case .reject = pool.request("after", now: until) { Issue.record("refused after the cool-down") }
        #expect(pool.unhealthyUntil == nil)
    }

    @Test func aGoodAnswerResetsTheBackoff() throws {
        var pool = Machine(Limits(maxWorkers: 2, maxQueue: 10))
        let one = try #require(spawned(pool.request("a", now: 0), for: "a"))
        let two = try #require(spawned(pool.request("b", now: 0), for: "b"))
        _ = pool.workerRetired(one, crashed: true, now: 0)
        _ = pool.workerFinished(two, now: 10)
        guard case .run("c", on: two) = pool.request("c", now: 20) else { Issue.record("expected the idle worker"); return }
        #expect(spawned(pool.request("d", now: 20), for: "d") != nil, "no backoff after a good answer")
    }

    @Test func drainingStopsIdleWorkersAndBusyOnesWhenTheyFinish() throws {
        var pool = Machine(Limits(maxWorkers: 2, maxQueue: 10))
        let one = try #require(spawned(pool.request("a", now: 0), for: "a"))
        let two = try #require(spawned(pool.request("b", now: 0), for: "b"))
        _ = pool.request("c", now: 0)
        _ = pool.workerFinished(one, now: 5)  // takes c
        _ = pool.workerFinished(one, now: 6)  // idles
        let (stopped, waiting) = pool.drain()
        #expect(stopped == [one])
        #expect(waiting.isEmpty)
        #expect(!pool.isFinished)
        guard case .stop(two) = pool.workerFinished(two, now: 7) else { Issue.record("expected a stop"); return }
        #expect(pool.isFinished)
        guard case .reject("late", .shuttingDown) = pool.request("late", now: 8) else { Issue.record("refused"); return }
    }

    @Test func drainingHandsBackWaitingRequestsInOrder() throws {
        var pool = Machine(Limits(maxWorkers: 1, maxQueue: 10))
        _ = try #require(spawned(pool.request("a", now: 0), for: "a"))
        _ = pool.request("b", now: 1)
        _ = pool.request("c", now: 2)
        #expect(pool.drain().waiting == ["b", "c"])
    }
}
