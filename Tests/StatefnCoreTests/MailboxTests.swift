import StatefnPostgres
import Synchronization
import Testing

// An entity's commands run one at a time, in arrival order.
@testable import StatefnCore

@Suite("entity mailboxes", .timeLimit(.minutes(1)))
struct MailboxTests {
    @Test func stateMachineHandsOverInArrivalOrder() {
        var mailbox = MailboxStateMachine<String>()
        guard case .run = mailbox.acquire("a") else { Issue.record("first caller must run"); return }
        guard case .wait = mailbox.acquire("b"), case .wait = mailbox.acquire("c") else {
            Issue.record("later callers must wait")
            return
        }
        #expect(mailbox.queued == 2)
        guard case .resume("b") = mailbox.release(), case .resume("c") = mailbox.release() else {
            Issue.record("waiters must resume in order")
            return
        }
        guard case .idle = mailbox.release() else { Issue.record("empty mailbox must go idle"); return }
        guard case .run = mailbox.acquire("d") else { Issue.record("an idle mailbox runs at once"); return }
    }

    @Test func stateMachineKeepsOrderAcrossManyWaiters() {
        var mailbox = MailboxStateMachine<Int>()
        _ = mailbox.acquire(-1)
        for i in 0..<1000 { _ = mailbox.acquire(i) }
        var order: [Int] = []
        while case .resume(let next) = mailbox.release() { order.append(next) }
        #expect(order == Array(0..<1000))
    }

    @Test func commandsOnOneEntityNeverOverlapAndKeepOrder() async throws {
        let mailboxes = EntityMailboxes<Int, Int>()
        let key = EntityKey(function: "f", entity: "e")
        let probe = Probe()
        let gate = AsyncStream<Void>.makeStream()
        var tasks: [Task<Void, any Error>] = []
        for i in 0..<50 {
            tasks.append(
                Task {
                    _ = await mailboxes.run(key, i, maxBatch: 1, joins: { _, _ in true }) { members in
                        probe.enter()
                        if i == 0 { for await _ in gate.stream {} }  // hold the entity until all have arrived
                        try? await Task.sleep(for: .microseconds(100))
                        probe.leave(i)
                        return members
                    }
                })
            // Arrival order is the order of enqueueing: start the next only once this one runs (the first) or waits
            // (the rest), so the order the tasks happen to start in cannot change it.
            let arrived = await until { i == 0 ? probe.entered == 1 : mailboxes.queuedCount == i }
            guard arrived else {
                Issue.record(
                    "command \(i) neither ran nor waited (entered \(probe.entered), queued \(mailboxes.queuedCount))")
                break
            }
        }
        gate.continuation.finish()
        for task in tasks { try await task.value }
        #expect(probe.peak == 1)
        #expect(probe.order == Array(0..<50))
        #expect(mailboxes.queuedCount == 0)
    }

    @Test func differentEntitiesRunConcurrently() async throws {
        let mailboxes = EntityMailboxes<Int, Bool>()
        let probe = Probe()
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<8 {
                group.addTask {
                    await mailboxes.run(
                        EntityKey(function: "f", entity: "e\(i)"), i, maxBatch: 64, joins: { _, _ in true }
                    ) { _ in
                        probe.enter()
                        // Each holds its entity until all eight are in: were they serialized, none would get there.
                        let allIn = await until { probe.entered == 8 }
                        probe.leave(i)
                        return [allIn]
                    }
                }
            }
            for try await allIn in group {
                #expect(allIn, "only \(probe.peak) commands on different entities ran at once")
            }
        }
        #expect(probe.peak == 8)
    }
}

extension MailboxTests {
    /// Commands queued behind a running one join the next batch, in arrival order, up to the first that may not
    /// join (it leads a batch of its own) and up to `maxBatch`; each gets the answer its batch gave it.
    @Test func queuedCommandsJoinTheNextBatchInOrder() async throws {
        let mailboxes = EntityMailboxes<Int, String>()
        let key = EntityKey(function: "f", entity: "e")
        let batches = Batches()
        let gate = AsyncStream<Void>.makeStream()
        var tasks: [Task<String, Never>] = []
        // 20 may not join anything (an If-Match command, say); at most 8 run in one batch.
        for i in 0..<30 {
            tasks.append(
                Task {
                    await mailboxes.run(key, i, maxBatch: 8, joins: { $0 != 20 && $1 != 20 }) { members in
                        batches.append(members)
                        if members.first == 0 { for await _ in gate.stream {} }
                        return members.map { "answer \($0) of batch \(members[0])" }
                    }
                })
            let arrived = await until { i == 0 ? batches.all.count == 1 : mailboxes.queuedCount == i }
            guard arrived else {
                Issue.record("command \(i) neither ran nor waited")
                break
            }
        }
        gate.continuation.finish()
        var answers: [String] = []
        for task in tasks { answers.append(await task.value) }
        #expect(
            batches.all == [
                [0], Array(1...8), Array(9...16), Array(17...19), [20], Array(21...28), [29],
            ])
        #expect(answers[5] == "answer 5 of batch 1" && answers[20] == "answer 20 of batch 20")
        #expect(mailboxes.queuedCount == 0)
    }

    @Test func takeQueuedStopsAtTheFirstRefusal() {
        var mailbox = MailboxStateMachine<Int>()
        _ = mailbox.acquire(0)
        for i in 1...5 { _ = mailbox.acquire(i) }
        #expect(mailbox.takeQueued(max: 10) { $0 != 3 } == [1, 2])
        guard case .resume(3) = mailbox.release() else {
            Issue.record("the refused waiter must lead next")
            return
        }
        #expect(mailbox.takeQueued(max: 1) { _ in true } == [4])
        guard case .resume(5) = mailbox.release(), case .idle = mailbox.release() else {
            Issue.record("the rest must follow in order")
            return
        }
    }
}

/// Waits, yielding, until `condition` holds; false (and the caller records why) once `seconds` have passed.
private func until(seconds: Double = 10, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while !condition() {
        guard ContinuousClock.now < deadline else { return false }
        await Task.yield()
    }
    return true
}

/// The batches a mailbox ran, in order.
private final class Batches: Sendable {
    private let state = Mutex<[[Int]]>([])
    func append(_ batch: [Int]) { state.withLock { $0.append(batch) } }
    var all: [[Int]] { state.withLock { $0 } }
}

/// Records how many bodies run at once, and the order they finish in.
private final class Probe: Sendable {
    private let state = Mutex<(running: Int, peak: Int, entered: Int, order: [Int])>((0, 0, 0, []))
    func enter() {
        state.withLock {
            $0.running += 1
            $0.entered += 1
            $0.peak = max($0.peak, $0.running)
        }
    }
    func leave(_ index: Int) {
        state.withLock {
            $0.running -= 1
            $0.order.append(index)
        }
    }
    var peak: Int { state.withLock { $0.peak } }
    /// How many bodies have started, in all.
    var entered: Int { state.withLock { $0.entered } }
    var order: [Int] { state.withLock { $0.order } }
}

@Suite("FIFO", .timeLimit(.minutes(1)))
struct FIFOTests {
    /// Order holds through pops, pushes back to the front and compaction, and a queue that never runs empty under
    /// steady traffic stays the size of what it holds.
    @Test func orderAndBoundedStorage() {
        var queue = FIFO<Int>()
        var next = 0
        var expected = 0
        for round in 0..<10_000 {
            queue.append(next)
            next += 1
            queue.append(next)
            next += 1
            if round % 3 == 0, let taken = queue.popFirst() {
                queue.prepend([taken])  // taken out and put back: still first
            }
            #expect(queue.popFirst() == expected)
            expected += 1
            #expect(queue.storedCount <= 2 * queue.count + 64)
        }
        #expect(queue.count == 10_000 && queue.first == expected)
        var rest: [Int] = []
        while let value = queue.popFirst() { rest.append(value) }
        #expect(rest == Array(expected..<next))
        #expect(queue.isEmpty && queue.first == nil)
    }
}
