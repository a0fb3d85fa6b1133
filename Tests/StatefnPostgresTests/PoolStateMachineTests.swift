// The pool's bookkeeping, driven event by event with a fake clock: no threads, no database.
import Testing

@testable import StatefnPostgres

@Suite(.timeLimit(.minutes(1))) struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine<String>
    let timeout: UInt64 = 10_000

    @Test func freeSlotsRunAtOnceAndTheLastReleasedIsReusedFirst() {
        var machine = Machine(slotCount: 2, waitTimeout: timeout)
        #expect(slot(of: machine.borrow("a", now: 0)) == 0)
        #expect(slot(of: machine.borrow("b", now: 0)) == 1)
        #expect(isPark(machine.release(slot: 1)))
        #expect(isPark(machine.release(slot: 0)))
        // A quiet pool keeps going back to one connection instead of opening others.
        #expect(slot(of: machine.borrow("c", now: 0)) == 0)
        #expect(isPark(machine.release(slot: 0)))
        #expect(slot(of: machine.borrow("d", now: 0)) == 0)
    }

    @Test func waitersAreServedInArrivalOrderAndOnlyTheFirstSchedulesASweep() {
        var machine = Machine(slotCount: 1, waitTimeout: timeout)
        _ = machine.borrow("a", now: 0)
        #expect(sweepAt(machine.borrow("b", now: 5)) == .some(5 + timeout))
        #expect(sweepAt(machine.borrow("c", now: 6)) == .some(nil))
        #expect(machine.waitingCount == 2)
        #expect(runs(machine.release(slot: 0)) == "b")
        #expect(runs(machine.release(slot: 0)) == "c")
        #expect(isPark(machine.release(slot: 0)))
        #expect(machine.waitingCount == 0)
    }

    @Test func aSweepFailsOnlyExpiredWaitersAndSchedulesTheNext() {
        var machine = Machine(slotCount: 1, waitTimeout: timeout)
        _ = machine.borrow("a", now: 0)
        _ = machine.borrow("b", now: 100)
        _ = machine.borrow("c", now: 200)
        _ = machine.borrow("d", now: 5_000)
        let sweep = machine.sweep(now: 200 + timeout)
        #expect(sweep.expired == ["b", "c"])
        #expect(sweep.nextSweepAt == 5_000 + timeout)
        #expect(runs(machine.release(slot: 0)) == "d")
        let late = machine.sweep(now: 5_000 + timeout)
        #expect(late.expired.isEmpty)
        #expect(late.nextSweepAt == nil)
        // With no sweep pending, the next waiter schedules one again.
        #expect(sweepAt(machine.borrow("e", now: 20_000)) == .some(20_000 + timeout))
    }

    @Test func closingFailsWaitersClosesIdleSlotsAndBusySlotsOnRelease() {
        var machine = Machine(slotCount: 3, waitTimeout: timeout)
        _ = machine.borrow("a", now: 0)
        _ = machine.borrow("b", now: 0)
        _ = machine.borrow("c", now: 0)
        _ = machine.borrow("waiting", now: 0)
        #expect(runs(machine.release(slot: 0)) == "waiting")
        _ = machine.borrow("w2", now: 0)
        #expect(runs(machine.release(slot: 0)) == "w2")
        #expect(isPark(machine.release(slot: 2)))
        let close = machine.close()
        #expect(close.idleSlots == [2])
        #expect(close.waiters.isEmpty)
        #expect(isClose(machine.release(slot: 0)))
        #expect(isClose(machine.release(slot: 1)))
        if case .fail(let request, let error) = machine.borrow("late", now: 0) {
            #expect(request == "late")
            #expect(error.code == .poolClosed)
        } else {
            Issue.record("a closed pool must refuse new requests")
        }
        #expect(machine.close().idleSlots.isEmpty)
    }

    @Test func closingHandsBackEveryWaiter() {
        var machine = Machine(slotCount: 1, waitTimeout: timeout)
        _ = machine.borrow("a", now: 0)
        for name in ["b", "c", "d"] { _ = machine.borrow(name, now: 0) }
        _ = machine.release(slot: 0)  // "b" runs
        let close = machine.close()
        #expect(close.waiters == ["c", "d"])
        #expect(close.idleSlots.isEmpty)
    }

    @Test func aLongQueueStaysInOrderAcrossCompaction() {
        var machine = Machine(slotCount: 1, waitTimeout: timeout)
        _ = machine.borrow("first", now: 0)
        var served: [String] = []
        for round in 0..<10 {
            for index in 0..<100 { _ = machine.borrow("\(round)-\(index)", now: UInt64(round)) }
            for _ in 0..<70 { if let next = runs(machine.release(slot: 0)) { served.append(next) } }
        }
        while let next = runs(machine.release(slot: 0)) { served.append(next) }
        let expected = (0..<10).flatMap { round in (0..<100).map { "\(round)-\($0)" } }
        #expect(served == expected)
    }

    private func slot(of action: Machine.BorrowAction) -> Int? {
        if case .run(let slot, _) = action { return slot }
        return nil
    }

    private func sweepAt(_ action: Machine.BorrowAction) -> UInt64?? {
        if case .wait(let sweepAt) = action { return .some(sweepAt) }
        return .none
    }

    private func runs(_ action: Machine.ReleaseAction) -> String? {
        if case .run(let request) = action { return request }
        return nil
    }

    private func isPark(_ action: Machine.ReleaseAction) -> Bool {
        if case .park = action { return true }
        return false
    }

    private func isClose(_ action: Machine.ReleaseAction) -> Bool {
        if case .close = action { return true }
        return false
    }
}
