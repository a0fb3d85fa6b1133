import Testing

@testable import StatefnWorkers

/// The pool without processes: every event and the action it asks for.
@Suite struct PoolStateMachineTests {
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
        guard case .spawn(let replacement, for: "b") = pool.workerRetired(worker) else {
            Issue.record("expected a replacement for b")
            return
        }
        #expect(replacement != worker)
        guard case .none = pool.workerRetired(worker) else { Issue.record("retiring twice must do nothing"); return }
        guard case .none = pool.workerRetired(replacement) else { Issue.record("nothing waits"); return }
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
        guard case .none = pool.workerRetired(worker) else { Issue.record("no respawn while stopping"); return }
    }
}
