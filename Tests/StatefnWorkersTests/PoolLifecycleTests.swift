// The pool's life against real processes: workers started ahead of demand, scale to zero, the queue, and new code
// taking over from old code while requests are in flight.
import Foundation
import Synchronization
import StatefnJSON
import Testing

@testable import StatefnWorkers

@Suite(.timeLimit(.minutes(2))) struct PoolLifecycleTests {
    @Test func minWorkersStartBeforeAnyRequest() async throws {
        try await withPool { pool in
            let echo = fixture("echo") { $0.minWorkers = 2 }
            pool.update(FunctionCatalog(functions: ["echo": echo]))
            #expect(await eventually { await pool.status().first?.idle == 2 })
            let pids = try #require(await pool.status().first?.pids)
            let answer = try await pool.invoke(echo, request: request("warm"))
            #expect(pids.contains(Int32(try #require(answer["reply"]?["pid"]?.integerValue))))
            #expect(await pool.status().first?.coldStarts == 2)
        }
    }

    @Test func idleWorkersStopAfterIdleTimeoutDownToZero() async throws {
        try await withPool { pool in
            let echo = fixture("echo") { $0.idleTimeoutMs = 300 }
            let answer = try await pool.invoke(echo, request: request("a"))
            let pid = Int32(try #require(answer["reply"]?["pid"]?.integerValue))
            #expect(await eventually { await pool.status().allSatisfy { $0.pids.isEmpty && $0.idle == 0 } })
            #expect(await eventually { !groupExists(pid) })
            let again = try await pool.invoke(echo, request: request("b"))
            #expect(again["reply"]?["pid"]?.integerValue != Int64(pid))
        }
    }

    @Test func busyWorkersQueueRequestsThenRefuseWithRetryAfter() async throws {
        try await withPool { pool in
            let echo = fixture("echo") {
                $0.maxWorkers = 1
                $0.maxQueue = 2
            }
            _ = try await pool.invoke(echo, request: request("warm-up"))
            let gate = Gate()
            let results = await withTaskGroup(of: (Int, WorkerError?).self) { group in
                let held = request("q0", payload: ["gate": gate.json])
                group.addTask { (0, await failure { try await pool.invoke(echo, request: held) }) }
                #expect(await eventually { await pool.status().first?.busy == 1 }, "q0 never reached the worker")
                for index in 1...2 {
                    group.addTask { (index, await failure { try await pool.invoke(echo, request: request("q\(index)")) }) }
                }
                #expect(await eventually { await pool.status().first?.queued == 2 }, "q1 and q2 never queued")
                group.addTask { (3, await failure { try await pool.invoke(echo, request: request("q3")) }) }
                var results: [Int: WorkerError?] = [:]
                for await (index, error) in group {
                    results[index] = error
                    if index == 3 { gate.open() }  // refused while q0 held the worker; now let the rest through
                }
                return results
            }
            #expect(results[0]! == nil && results[1]! == nil && results[2]! == nil)
            #expect(results[3]??.code == .queueFull)
            #expect(results[3]??.retryAfterSeconds == 1)
        }
    }

    @Test func newCodeTakesOverWhileOldRequestsFinishOnOldWorkers() async throws {
        let directory = TemporaryDirectory()
        let version = { (n: Int) in
            """
            #!/usr/bin/env python3
            import json, os, sys, time
            for line in sys.stdin:
                request = json.loads(line)
                gate = (request.get("payload") or {}).get("gate")
                deadline = time.monotonic() + 30
                while gate and not os.path.exists(gate) and time.monotonic() < deadline:
                    time.sleep(0.001)
                print(json.dumps({"id": request["id"], "reply": {"version": \(n), "pid": os.getpid()}}), flush=True)
            """
        }
        directory.install("hot", version(1))
        try await withPool { pool in
            let first = FunctionCatalog.scan(directory: directory.path)
            pool.update(first)
            let old = try #require(first.functions["hot"])
            let warm = try await pool.invoke(old, request: request("v1"))
            #expect(warm["reply"]?["version"] == 1)
            let oldPid = Int32(try #require(warm["reply"]?["pid"]?.integerValue))

            // Held in the old worker until the new code has answered: the two overlap for certain.
            let gate = Gate()
            async let inFlight = pool.invoke(old, request: request("slow", payload: ["gate": gate.json]))
            #expect(await eventually { await pool.status().first?.busy == 1 })
            directory.install("hot", version(2))
            let second = FunctionCatalog.scan(directory: directory.path)
            #expect(second.functions["hot"]?.revision != old.revision)
            pool.update(second)
            // A request made with the old definition still goes to the new code.
            let fresh = try await pool.invoke(old, request: request("v2"))
            #expect(fresh["reply"]?["version"] == 2)
            #expect(await pool.status().contains { $0.draining && $0.busy == 1 }, "the old request is still in flight")
            gate.open()
            let slow = try await inFlight
            #expect(slow["reply"]?["version"] == 1)
            #expect(slow["reply"]?["pid"]?.integerValue == Int64(oldPid))
            #expect(await eventually { !groupExists(oldPid) })
            #expect(await eventually { await pool.status().count == 1 })

            try FileManager.default.removeItem(atPath: directory.path + "/hot")
            pool.update(FunctionCatalog.scan(directory: directory.path))
            #expect(await failureCode { try await pool.invoke(old, request: request("gone")) } == .removed)
            #expect(await eventually { await pool.status().allSatisfy { $0.pids.isEmpty } })
        }
    }

    @Test func theWatcherPicksUpAChangedExecutable() async throws {
        let directory = TemporaryDirectory()
        let script = { (reply: String) in
            "#!/bin/sh\nwhile read -r line; do\n  id=$(printf '%s' \"$line\" | sed 's/.*\"id\": *\"\\([^\"]*\\)\".*/\\1/')\n"
                + "  printf '{\"id\":\"%s\",\"reply\":\"\(reply)\"}\\n' \"$id\"\ndone\n"
        }
        directory.install("watched", script("one"))
        try await withPool { pool in
            let changes = Counter()
            let initial = FunctionCatalog.scan(directory: directory.path)
            pool.watchFunctions(directory: directory.path, initial: initial, intervalMs: 100) { _ in changes.increment() }
            let definition = try #require(initial.functions["watched"])
            #expect(try await pool.invoke(definition, request: request("a"))["reply"] == "one")
            directory.install("watched", script("two"))
            #expect(await eventually { changes.value >= 1 })
            #expect(try await pool.invoke(definition, request: request("b"))["reply"] == "two")
        }
    }
}

/// Collects the error a call failed with, if any.
func failure(_ body: () async throws -> JSONValue) async -> WorkerError? {
    do {
        _ = try await body()
        return nil
    } catch {
        return error as? WorkerError
    }
}

final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
