// The worker pool against real processes: the fixtures in Fixtures/functions, each misbehaving in one way.
import Foundation
import Logging
import StatefnJSON
import Synchronization
import Testing

@testable import StatefnWorkers

/// Runs `body` with a fresh pool and always shuts it down, so no test leaves workers behind.
func withPool<T>(
    _ recorder: LogRecorder = LogRecorder(), _ body: (WorkerPool) async throws -> T
) async rethrows -> T {
    let pool = WorkerPool(logger: recorder.logger)
    do {
        let result = try await body(pool)
        await pool.shutdown()
        return result
    } catch {
        await pool.shutdown()
        throw error
    }
}

@Suite(.timeLimit(.minutes(3))) struct WorkerPoolTests {
    @Test func warmWorkerIsReusedAcrossRequests() async throws {
        try await withPool { pool in
            let echo = fixture("echo")
            var pids: Set<Int64> = []
            for index in 0..<5 {
                let answer = try await pool.invoke(echo, request: request("r\(index)", payload: ["n": .integer(Int64(index))]))
                #expect(answer["id"] == .string("r\(index)"))
                #expect(answer["reply"]?["payload"]?["n"] == .integer(Int64(index)))
                pids.insert(try #require(answer["reply"]?["pid"]?.integerValue))
            }
            #expect(pids.count == 1)
            let status = await pool.status()
            #expect(status.map(\.pids) == [pids.map { Int32($0) }])
            #expect(status.first?.idle == 1)
        }
    }

    @Test func manyConcurrentRequestsShareTheWorkers() async throws {
        try await withPool { pool in
            let echo = fixture("echo") { $0.maxWorkers = 4 }
            let pids = try await withThrowingTaskGroup(of: Int64.self) { group in
                for index in 0..<50 {
                    group.addTask {
                        let answer = try await pool.invoke(echo, request: request("c\(index)", payload: ["sleep_ms": 20]))
                        #expect(answer["id"] == .string("c\(index)"))
                        return try #require(answer["reply"]?["pid"]?.integerValue)
                    }
                }
                return try await group.reduce(into: Set<Int64>()) { $0.insert($1) }
            }
            #expect(pids.count >= 1 && pids.count <= 4)
        }
    }

    @Test func aFullQueueRefusesAtOnce() async throws {
        try await withPool { pool in
            let echo = fixture("echo") {
                $0.maxWorkers = 1
                $0.maxQueue = 1
                $0.queueTimeoutMs = 60_000
            }
            let gate = Gate()
            async let slow = pool.invoke(echo, request: request("slow", payload: ["gate": gate.json]))
            #expect(await eventually { await pool.status().first?.busy == 1 })
            async let queued = pool.invoke(echo, request: request("queued"))
            #expect(await eventually { await pool.status().first?.queued == 1 })
            let refused = await failureCode { try await pool.invoke(echo, request: request("refused")) }
            #expect(refused == .queueFull)
            gate.open()
            let (slowAnswer, queuedAnswer) = try await (slow, queued)
            #expect(slowAnswer["id"] == "slow")
            #expect(queuedAnswer["id"] == "queued")
        }
    }

    @Test func waitingPastTheQueueTimeoutIsRefused() async throws {
        try await withPool { pool in
            let echo = fixture("echo") {
                $0.maxWorkers = 1
                $0.queueTimeoutMs = 200
            }
            let gate = Gate()
            async let slow = pool.invoke(echo, request: request("slow", payload: ["gate": gate.json]))
            #expect(await eventually { await pool.status().first?.busy == 1 })
            let asked = ContinuousClock.now
            let refused = await failureCode { try await pool.invoke(echo, request: request("late")) }
            #expect(refused == .queueFull)
            #expect(ContinuousClock.now - asked >= .milliseconds(200), "refused before its queue_timeout_ms")
            gate.open()
            let slowAnswer = try await slow
            #expect(slowAnswer["id"] == "slow")
        }
    }

    @Test func aCrashIsReportedAndTheNextRequestGetsANewWorker() async throws {
        try await withPool { pool in
            let echo = fixture("echo")
            let first = try await pool.invoke(echo, request: request("a"))
            do {
                _ = try await pool.invoke(echo, request: request("b", payload: ["exit": 3]))
                Issue.record("a crash must not answer")
            } catch let error as WorkerError {
                #expect(error.code == .crashed)
                #expect(error.detail.contains("exited with status 3"))
                #expect(error.description == "worker error (crashed)")
            }
            let next = try await pool.invoke(echo, request: request("c"))
            #expect(next["reply"]?["pid"] != first["reply"]?["pid"])
        }
    }

    @Test func garbageIsAnInvalidResponseAndTheWorkerIsReplaced() async throws {
        await withPool { pool in
            let garbage = fixture("garbage")
            let code = await failureCode { try await pool.invoke(garbage, request: request("g1")) }
            #expect(code == .invalidResponse)
            #expect(await eventually { await pool.status().allSatisfy { $0.pids.isEmpty && $0.busy == 0 } })
            let again = await failureCode { try await pool.invoke(garbage, request: request("g2")) }
            #expect(again == .invalidResponse)
        }
    }

    @Test func aWrongIdIsAProtocolViolation() async throws {
        await withPool { pool in
            let code = await failureCode { try await pool.invoke(fixture("wrongid"), request: request("w1")) }
            #expect(code == .protocolViolation)
        }
    }

    @Test func anAnswerOverEightMebibytesIsRefused() async throws {
        try await withPool { pool in
            let echo = fixture("echo")
            let fine = try await pool.invoke(echo, request: request("ok", payload: ["bytes": 1_000_000]))
            #expect(fine["reply"]?["filler"]?.stringValue?.count == 1_000_000)
            let code = await failureCode {
                try await pool.invoke(echo, request: request("big", payload: ["bytes": 9_000_000]))
            }
            #expect(code == .invalidResponse)
        }
    }

    @Test func aRequestWithoutIdIsRefused() async throws {
        await withPool { pool in
            let code = await failureCode { try await pool.invoke(fixture("echo"), request: ["command": "x"]) }
            #expect(code == .protocolViolation)
        }
    }

    @Test func aMissingExecutableFailsToSpawn() async throws {
        await withPool { pool in
            var ghost = fixture("echo")
            ghost.executable = Paths.fixtures + "/does-not-exist"
            let code = await failureCode { try await pool.invoke(ghost, request: request("x")) }
            #expect(code == .spawnFailed)
        }
    }

    @Test func aTimeoutKillsTheWholeProcessGroup() async throws {
        try await withPool { pool in
            #expect(fixture("sleeper").manifest.timeoutMs == 1000)
            // Three seconds, so that a loaded machine still shows the worker to the test before its deadline.
            let sleeper = fixture("sleeper") { $0.timeoutMs = 3000 }
            async let outcome = failure { try await pool.invoke(sleeper, request: request("s")) }
            // The pool's worker, leading its own group, after it exec'd into sleep and before its deadline.
            let sighted = await sightWorker(of: "sleeper", in: pool, running: "sleep")
            let error = await outcome
            let worker = try #require(sighted, "the worker was never seen running sleep")
            #expect(error?.code == .timedOut)
            #expect(await eventually { remains(of: worker).isEmpty }, "left: \(remains(of: worker))")
        }
    }

    @Test func aTimeoutKillsGrandchildrenToo() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let code = await failureCode { try await pool.invoke(fixture("grandchild"), request: request("g")) }
            #expect(code == .timedOut)
            let line = try #require(recorder.messages(containing: "grandchild").first)
            let words = line.message.split(separator: " ")
            let leader = try #require(Int32(words[1]))
            let grandchild = try #require(Int32(words[3]))
            #expect(line.metadata["pid"] == "\(leader)")
            #expect(line.metadata["function"] == "grandchild")
            #expect(await eventually { !groupExists(leader) })
            #expect(await eventually { kill(grandchild, 0) != 0 && errno == ESRCH })
        }
    }

    @Test func aStderrFloodNeitherBlocksNorReachesTheAnswer() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let chatty = fixture("chatty")
            for index in 0..<2 {
                let answer = try await pool.invoke(chatty, request: request("c\(index)"))
                #expect(answer == ["id": .string("c\(index)"), "reply": "done"])
            }
            #expect(await eventually { recorder.messages(containing: "chatty log line 039999").count == 2 })
            let truncated = recorder.messages(containing: "…[truncated]")
            #expect(truncated.count == 2)
            #expect(truncated.allSatisfy { $0.message.utf8.count <= WorkerProcess.stderrLineLimit + 20 })
            #expect(truncated.first?.metadata["function"] == "chatty")
        }
    }

    @Test func workersSeeOnlyTheirManifestEnvironment() async throws {
        setenv("DATABASE_URL", "postgres://secret@db/statefn", 1)
        setenv("STATEFN_JWT_SECRET", "do-not-leak", 1)
        try await withPool { pool in
            let function = fixture("env")
            let answer = try await pool.invoke(function, request: request("e"))
            let env = try #require(answer["reply"]?.objectValue)
            #expect(env["DATABASE_URL"] == nil)
            #expect(!env.keys.contains { $0.hasPrefix("STATEFN_") })
            #expect(env["GREETING"] == "hello")
            #expect(env["LANG"] == "en_US.UTF-8")
            #expect(env["PATH"] == .string(Spawner.defaultPath))
            #expect(env["HOME"] == .string(function.workingDirectory))
            #expect(Set(env.keys).isSubset(of: ["GREETING", "LANG", "PATH", "HOME", "LC_CTYPE", "PWD"]))
        }
    }

    @Test(arguments: [WorkerMode.fork, .warm])
    func workersStartInTheirOwnGroupWithNothingInherited(mode: WorkerMode) async throws {
        // The gateway ignores SIGPIPE and its spawn threads block most signals; neither may reach a worker.
        _ = signal(SIGPIPE, SIG_IGN)
        try await withPool { pool in
            let function = fixture("inspect") { $0.mode = mode }
            let reply = try #require(try await pool.invoke(function, request: request("i"))["reply"])
            #expect(reply["pgrp"] == reply["pid"])
            #expect(reply["cwd"] == .string(function.workingDirectory))
            #expect(reply["extra_fds"] == "", "descriptors beyond 0, 1 and 2 reached the worker")
            #expect(reply["blocked"] == "0000000000000000")
            // Only glibc's two internal signals (32 and 33) stay ignored, as glibc's posix_spawn leaves them.
            let ignored = try #require(UInt64(reply["ignored"]?.stringValue ?? "", radix: 16))
            #expect(ignored & ~UInt64(0x1_8000_0000) == 0, "ignored signal mask \(String(ignored, radix: 16))")
        }
    }

    @Test func maxRequestsRecyclesTheWorker() async throws {
        try await withPool { pool in
            let echo = fixture("echo") { $0.maxRequests = 2 }
            var pids: [JSONValue?] = []
            for index in 0..<4 {
                pids.append(try await pool.invoke(echo, request: request("m\(index)"))["reply"]?["pid"])
            }
            #expect(pids[0] == pids[1])
            #expect(pids[2] == pids[3])
            #expect(pids[1] != pids[2])
        }
    }

    @Test func aWorkerThatExitsAfterAnsweringIsReplaced() async throws {
        try await withPool { pool in
            let oneshot = fixture("oneshot")
            let first = try await pool.invoke(oneshot, request: request("o1"))
            #expect(await eventually { await pool.status().allSatisfy { $0.pids.isEmpty && $0.idle == 0 } })
            let second = try await pool.invoke(oneshot, request: request("o2"))
            #expect(first["reply"]?["pid"] != second["reply"]?["pid"])
        }
    }

    @Test func forkModeRunsOneProcessPerRequest() async throws {
        try await withPool { pool in
            let forkecho = fixture("forkecho")
            #expect(forkecho.manifest.mode == .fork)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<20 {
                    group.addTask {
                        let sent = request("f\(index)", payload: ["n": .integer(Int64(index)), "text": "a \"quoted\" line"])
                        let answer = try await pool.invoke(forkecho, request: sent)
                        #expect(answer["reply"] == sent)
                        #expect(answer["id"] == .string("f\(index)"))
                    }
                }
                try await group.waitForAll()
            }
            #expect(await eventually { await pool.status().allSatisfy { $0.pids.isEmpty } })
        }
    }

    @Test func forkModeTakesARequestLargerThanAPipeHolds() async throws {
        // The spawn thread writes what the new pipe takes (64 KiB); the event loop writes the rest as it drains.
        try await withPool { pool in
            let text = String(repeating: "0123456789abcdef", count: 20_000)
            let sent = request("big", payload: ["text": .string(text)])
            let answer = try await pool.invoke(fixture("forkecho"), request: sent)
            #expect(answer["reply"] == sent)
        }
    }

    @Test func forkModeDeadlineShorterThanATickFires() async throws {
        // A fork run normally reaches the loop thread with its first output; one that stays silent, with a deadline
        // before the next tick, must not wait for either: it is ended at its deadline, give or take a second for a
        // loaded machine (it would otherwise sleep 1000 s). The time is the process's own, read by a thread of this
        // test's own (Swift's two cooperative threads may be busy with other tests): from the kernel running the
        // script to the shell's death, which closes the script it was reading.
        let directory = TemporaryDirectory()
        directory.install("quiet", "#!/bin/sh\n# Reads a request, says nothing and sleeps.\nread -r line\nsleep 1000\n")
        var quiet = try #require(FunctionCatalog.scan(directory: directory.path).functions["quiet"])
        quiet.manifest.mode = .fork
        quiet.manifest.timeoutMs = 30
        let watch = try #require(OpenWatch(quiet.executable))
        // exec opens and closes the script; the shell opens it to read it, and closes it when it dies.
        let timeline = Mutex<[(OpenWatch.Event, ContinuousClock.Instant)]>([])
        let watcher = OwnThread {
            _ = watch.events(seconds: 30) { event, at in
                timeline.withLock { $0.append((event, at)) }
                return timeline.withLock { $0.count } == 4
            }
        }
        let code = await withPool { pool in await failureCode { try await pool.invoke(quiet, request: request("q")) } }
        await watcher.finished()
        #expect(code == .timedOut)
        let events = timeline.withLock { $0 }
        try #require(events.map(\.0) == [.open, .close, .open, .close], "\(events.map(\.0))")
        let lived = events[3].1 - events[0].1
        // Its own sleep would last 1,000 s; 5 s leaves a loaded machine room and still tells the deadline from it.
        #expect(lived < .seconds(5), "the 30 ms deadline ended the run \(lived) after its exec")
    }

    /// A fork-mode function whose executable this process has just written and still holds open for writing, as
    /// a deploy that is finishing its copy would; returns it and the open descriptor.
    private func executableStillBeingWritten(in directory: TemporaryDirectory) throws -> (FunctionDefinition, Int32) {
        let path = directory.path + "/busy"
        let writer = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o755)
        #expect(writer >= 0)
        let script = "#!/bin/sh\nread -r line\nid=${line#*\\\"id\\\":\\\"}\nprintf '{\"id\":\"%s\"}\\n' \"${id%%\\\"*}\"\n"
        _ = script.withCString { write(writer, $0, strlen($0)) }
        var function = try #require(FunctionCatalog.scan(directory: directory.path).functions["busy"])
        function.manifest.mode = .fork
        return (function, writer)
    }

    @Test func anExecutableStillOpenForWritingStartsOnceItsWriterCloses() async throws {
        let directory = TemporaryDirectory()
        let (function, writer) = try executableStillBeingWritten(in: directory)
        // Every attempt to exec the file opens it. A second open means the first was refused (ETXTBSY) and the spawn
        // is retrying; only then does the writer close, from a thread of its own so that it closes at once.
        let opens = try #require(OpenWatch(function.executable))
        let attemptsBeforeClose = Mutex(0)
        let closer = OwnThread {
            attemptsBeforeClose.withLock { $0 = opens.waitForOpens(2, seconds: 10) }
            close(writer)
        }
        try await withPool { pool in
            let answer = try await pool.invoke(function, request: request("b1"))
            #expect(answer["id"] == "b1")
        }
        await closer.finished()
        #expect(attemptsBeforeClose.withLock { $0 } >= 2, "the spawn never retried while the writer was open")
    }

    @Test func anExecutableHeldOpenForWritingIsRefusedAsBusy() async throws {
        let directory = TemporaryDirectory()
        let (function, writer) = try executableStillBeingWritten(in: directory)
        defer { close(writer) }
        let opens = try #require(OpenWatch(function.executable))
        await withPool { pool in
            do throws(WorkerError) {
                _ = try await pool.invoke(function, request: request("b2"))
                Issue.record("an executable open for writing cannot run")
            } catch {
                #expect(error.code == .spawnFailed)
                #expect(error.detail.contains(Errno(code: ETXTBSY).description), "\(error.detail)")
            }
        }
        // The kernel saw it tried, again and again, before giving up (the spawn's retries: DESIGN.md section 9).
        #expect(opens.opensSoFar() > 1, "the executable was not tried more than once")
    }

    @Test func forkModeCrashReportsTheExitStatus() async throws {
        try await withPool { pool in
            let crash = fixture("crash") { $0.mode = .fork }
            do {
                _ = try await pool.invoke(crash, request: request("x"))
                Issue.record("a crash must not answer")
            } catch let error as WorkerError {
                #expect(error.code == .crashed)
                #expect(error.detail.contains("exited with status 3"))
            }
        }
    }

    @Test func forkModeTimeoutKillsTheGroup() async throws {
        try await withPool { pool in
            let sleeper = fixture("sleeper") {
                $0.mode = .fork
                $0.timeoutMs = 3000  // so that a loaded machine still shows the run to the test before its deadline
            }
            async let code = failureCode { try await pool.invoke(sleeper, request: request("s")) }
            let sighted = await sightWorker(of: "sleeper", in: pool, running: "sleep")
            #expect(await code == .timedOut)
            let worker = try #require(sighted, "the fork run was never seen running sleep")
            #expect(await eventually { remains(of: worker).isEmpty }, "left: \(remains(of: worker))")
            #expect(await eventually { await pool.status().allSatisfy { $0.pids.isEmpty } })
        }
    }

    @Test func shutdownStopsWorkersAndRefusesNewRequests() async throws {
        let pool = WorkerPool(logger: LogRecorder().logger)
        let echo = fixture("echo")
        let answer = try await pool.invoke(echo, request: request("a"))
        let pid = Int32(try #require(answer["reply"]?["pid"]?.integerValue))
        async let stuck = failureCode { try await pool.invoke(fixture("sleeper") { $0.timeoutMs = 60_000 }, request: request("s")) }
        let sleeper = try #require(await sightWorker(of: "sleeper", in: pool, running: "sleep"))
        await pool.shutdown()
        #expect(await eventually { !groupExists(pid) })
        #expect(await eventually { remains(of: sleeper).isEmpty }, "left: \(remains(of: sleeper))")
        #expect(await stuck == .shuttingDown)
        let code = await failureCode { try await pool.invoke(echo, request: request("b")) }
        #expect(code == .shuttingDown)
        await pool.shutdown()
    }

    @Test func noZombiesAreLeftBehind() async throws {
        try await withPool { pool in
            for index in 0..<10 {
                _ = await failureCode { try await pool.invoke(fixture("crash"), request: request("z\(index)")) }
                _ = try await pool.invoke(fixture("forkecho"), request: request("f\(index)"))
            }
        }
        #expect(await eventually { zombieChildren().isEmpty }, "zombies: \(zombieChildren())")
    }
}
