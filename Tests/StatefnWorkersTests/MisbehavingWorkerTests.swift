// Functions that misbehave the ways real ones do, each against a real pool: every one gets the status a client
// should see, the pool keeps serving, and no process of it is left in the process table afterwards: checked by the
// pids the pool spawned and their process groups, which also sees a worker that exec'd into something else.
import Foundation
import StatefnJSON
import Synchronization
import Testing

@testable import StatefnWorkers

@Suite(.timeLimit(.minutes(3))) struct MisbehavingWorkerTests {
    /// The pool answers a good request after whatever a test did to it.
    func stillServes(_ pool: WorkerPool) async throws {
        let answer = try await pool.invoke(fixture("echo"), request: request("alive"))
        #expect(answer["id"] == "alive")
    }

    @Test func aCrashAtStartUpIs502AndACrashLoopIs503WithRetryAfter() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let startcrash = fixture("startcrash")
            for index in 0..<CrashPolicy.loopCrashes {
                let code = await failureCode { try await pool.invoke(startcrash, request: request("s\(index)")) }
                #expect(code == .crashed)
            }
            do {
                _ = try await pool.invoke(startcrash, request: request("again"))
                Issue.record("a crash loop must refuse")
            } catch let error as WorkerError {
                #expect(error.code == .unhealthy)
                #expect((error.retryAfterSeconds ?? 0) > 0)
            }
            let status = try #require(await pool.status().first { $0.function == "startcrash" })
            #expect(status.crashes == CrashPolicy.loopCrashes)
            #expect(status.unhealthyForMs != nil)
            try await stillServes(pool)
        }
        #expect(spawnedPids(of: "startcrash", in: recorder).count == CrashPolicy.loopCrashes)
        await expectNoStrays("startcrash", recorder)
    }

    @Test func aCrashMidRequestIs502AndTheWorkerIsReplaced() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let crash = fixture("crash")
            #expect(await failureCode { try await pool.invoke(crash, request: request("c1")) } == .crashed)
            #expect(await failureCode { try await pool.invoke(crash, request: request("c2")) } == .crashed)
            try await stillServes(pool)
        }
        #expect(spawnedPids(of: "crash", in: recorder).count == 2, "each crash got a worker of its own")
        await expectNoStrays("crash", recorder)
    }

    @Test func garbageIs502() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            #expect(
                await failureCode { try await pool.invoke(fixture("garbage"), request: request("g")) }
                    == .invalidResponse)
            try await stillServes(pool)
        }
        await expectNoStrays("garbage", recorder)
    }

    @Test func aTwentyMebibyteLineIs502AndTheWorkerIsReplaced() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let hugeline = fixture("hugeline")
            #expect(hugeline.manifest.maxResponseBytes == 8 << 20)
            for index in 0..<2 {
                #expect(
                    await failureCode { try await pool.invoke(hugeline, request: request("h\(index)")) }
                        == .invalidResponse)
            }
            let status = try #require(await pool.status().first { $0.function == "hugeline" })
            #expect(status.recycles == 2)
            #expect(status.crashes == 0)
            try await stillServes(pool)
        }
        #expect(spawnedPids(of: "hugeline", in: recorder).count == 2, "the worker was replaced")
        await expectNoStrays("hugeline", recorder)
    }

    @Test func maxResponseBytesIsTheManifestsCap() async throws {
        try await withPool { pool in
            let small = fixture("echo") { $0.maxResponseBytes = 4096 }
            _ = try await pool.invoke(small, request: request("fits", payload: ["bytes": 1000]))
            let code = await failureCode {
                try await pool.invoke(small, request: request("over", payload: ["bytes": 5000]))
            }
            #expect(code == .invalidResponse)
        }
    }

    @Test func a100MegabyteStderrFloodNeitherBlocksNorReachesTheAnswer() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let flood = fixture("flood")
            let answer = try await pool.invoke(flood, request: request("loud"))
            #expect(answer == ["id": "loud", "reply": "flooded"])
            // The same worker, its stderr drained, answers the next request at once.
            let quiet = try await pool.invoke(flood, request: request("quiet", payload: ["quiet": true]))
            #expect(quiet == ["id": "quiet", "reply": "flooded"])
            #expect(await pool.status().first { $0.function == "flood" }?.coldStarts == 1)
            let lines = recorder.all.filter {
                $0.metadata["function"] == "flood" && $0.message.hasSuffix("…[truncated]")
            }
            #expect(lines.count == 100)
            #expect(lines.allSatisfy { $0.message.utf8.count <= WorkerProcess.stderrLineLimit + 20 })
            try await stillServes(pool)
        }
        await expectNoStrays("flood", recorder)
    }

    /// A deadline sends SIGTERM to the worker's group first, and SIGKILL only once the grace has passed: the fixture
    /// notes each catchable signal with the time and carries on, so it must have been told, must outlive the
    /// SIGTERM by about the grace, and can only have been ended by a signal it cannot catch.
    @Test func aWorkerThatIgnoresSIGTERMIsKilledAfterTheGrace() async throws {
        let recorder = LogRecorder()
        let grace = Double(Teardown.graceMs) / 1000
        try await withPool(recorder) { pool in
            let stubborn = fixture("stubborn")
            #expect(stubborn.manifest.timeoutMs == 1000)
            async let outcome = failure { try await pool.invoke(stubborn, request: request("t")) }
            // The worker as the pool spawned it (its "started" line gives its pid), seen in the process table
            // before its deadline.
            let sighted = await sightWorker(of: "stubborn", in: pool, recorder: recorder)
            // Its death, as a thread of this test's own sees it in the process table (not when Swift's two
            // cooperative threads, busy with other tests, get round to looking).
            let died = Mutex<Date?>(nil)
            let deathWatch = sighted.map { worker in
                OwnThread {
                    let giveUp = ContinuousClock.now + .seconds(30)
                    while isAlive(worker), ContinuousClock.now < giveUp { usleep(1000) }
                    if !isAlive(worker) { died.withLock { $0 = Date() } }
                }
            }
            let error = await outcome
            let worker = try #require(sighted, "the worker was never seen in the process table")
            #expect(error?.code == .timedOut)
            let term = try #require(
                await eventuallyValue { recorder.messages(containing: "stubborn: got SIGTERM at ").first },
                "the worker never got SIGTERM")
            #expect(term.metadata["pid"] == "\(worker.pid)")
            // When the pool sent SIGTERM, from its own log line: the worker's trap, a shell forking `date`, can run
            // late on a loaded machine, so its own time only shows that the signal came.
            let sent = try #require(
                recorder.messages(containing: "sent SIGTERM to the worker's process group").first {
                    $0.metadata["pid"] == "\(worker.pid)"
                }, "the pool never logged sending SIGTERM")
            await deathWatch?.finished()
            let diedAt = try #require(died.withLock { $0 }, "\(worker) outlived its grace by far")
            // Alive for about the grace after SIGTERM: SIGTERM alone did not end it.
            let lived = diedAt.timeIntervalSince(sent.at)
            #expect(lived >= grace * 0.9, "killed \(lived) s after SIGTERM, before the \(grace) s grace")
            #expect(lived < grace + 3, "killed \(lived) s after SIGTERM, long after the \(grace) s grace")
            // SIGTERM was the only signal it could see; what ended it was one it cannot catch (SIGKILL).
            let signals = recorder.messages(containing: "stubborn: got SIG").map(\.message)
            #expect(signals.count == 1, "\(signals)")
            // Its group goes with it: the sleep it was running is gone too (once reaped, by whoever adopted it).
            #expect(await eventually { remains(of: worker).isEmpty }, "left: \(remains(of: worker))")
            #expect(await pool.status().first { $0.function == "stubborn" }?.timeouts == 1)
            try await stillServes(pool)
        }
        await expectNoStrays("stubborn", recorder)
    }

    @Test func aForkedGrandchildHoldingThePipesDiesWithItsGroup() async throws {
        let recorder = LogRecorder()
        var grandchild: Int32 = 0
        try await withPool(recorder) { pool in
            let answer = try await pool.invoke(fixture("forkgrandchild"), request: request("fg"))
            grandchild = Int32(try #require(answer["reply"]?["grandchild"]?.integerValue))
            #expect(await eventually { kill(grandchild, 0) != 0 && errno == ESRCH })
            #expect(await eventually { await pool.status().allSatisfy { $0.pids.isEmpty } })
        }
        await expectNoStrays("forkgrandchild", recorder, pids: [grandchild])
    }

    @Test func allocatingPastMemoryMBIs502Twice() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let hog = fixture("hog")
            #expect(hog.manifest.memoryMB == 64)
            // RLIMIT_DATA refuses the heap, or the worker's memory cgroup does...
            #expect(
                await failureCode { try await pool.invoke(hog, request: request("h", payload: ["how": "heap"])) }
                    == .crashed)
            // ...and the RSS watch, or the cgroup, kills what RLIMIT_DATA does not count.
            do {
                _ = try await pool.invoke(hog, request: request("s", payload: ["how": "shared"]))
                Issue.record("a worker over memory_mb must not answer")
            } catch let error as WorkerError {
                #expect(error.code == .crashed)
                #expect(error.detail.contains("memory_mb"))
            }
            let small = try await pool.invoke(hog, request: request("ok"))
            #expect(small["id"] == "ok")
            #expect((await pool.status().first { $0.function == "hog" }?.recycles ?? 0) >= 1)
        }
        await expectNoStrays("hog", recorder)
    }

    /// Where a memory cgroup is writable (as root on this kind of machine), each warm worker gets one of its own,
    /// limited to `memory_mb`, and the kernel's OOM killer enforces it; elsewhere RLIMIT_DATA does, and fork runs get
    /// RLIMIT_DATA everywhere. The test checks what workers run under, from /proc and the cgroup files, and that
    /// nothing is left afterwards. It runs the RLIMIT_DATA half (a fork run) on every host and the cgroup half where
    /// a cgroup is writable, says which ran, and insists on both as root with cgroup v1's memory hierarchy mounted
    /// read-write.
    @Test func aWarmWorkerRunsUnderMemoryMBInItsOwnCgroupWhereOneIsWritable() async throws {
        let recorder = LogRecorder()
        let ownCgroups = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)
        let expected = MemoryCgroups.locate(
            mountInfo: try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8), ownCgroups: ownCgroups,
            subtreeControl: { try? String(contentsOfFile: $0 + "/cgroup.subtree_control", encoding: .utf8) })
        // Seen without MemoryCgroups: root can write cgroup v1's memory hierarchy where it is mounted read-write.
        let mounts = try String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)
        let writableV1 =
            getuid() == 0
            && mounts.split(separator: "\n").contains { line in
                let fields = line.split(separator: " ")
                guard fields.count >= 4, fields[2] == "cgroup" else { return false }
                let options = fields[3].split(separator: ",")
                return options.contains("rw") && options.contains("memory")
            }
        let ownMemoryLine =
            ownCgroups.split(separator: "\n").first { $0.contains(":memory:") }
            ?? ownCgroups.split(separator: "\n").first { $0.hasPrefix("0::") } ?? ""
        var workerCgroup: String?
        try await withPool(recorder) { pool in
            // The RLIMIT_DATA half, on every host: a fork run never gets a cgroup.
            let forkHog = fixture("hog") { $0.mode = .fork }
            let forked = try #require(try await pool.invoke(forkHog, request: request("f"))["reply"])
            #expect(forked["data_limit"] == .string("\(64 << 20)"), "a fork run is under RLIMIT_DATA: \(forked)")
            #expect(forked["memory_cgroup"] == .string(String(ownMemoryLine)), "a fork run gets no cgroup of its own")
            #expect(
                await failureCode { try await pool.invoke(forkHog, request: request("fh", payload: ["how": "heap"])) }
                    == .crashed)
            print("RLIMIT_DATA half: ran (a fork run under Max data size \(64 << 20), its 256 MiB heap refused)")

            let hog = fixture("hog")
            let first = try await pool.invoke(hog, request: request("a"))
            let pid = try #require(first["reply"]?["pid"]?.integerValue)
            let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
            let dataLimit = limits.split(separator: "\n").first { $0.hasPrefix("Max data size") }.map(String.init) ?? ""
            if writableV1 {
                #expect(
                    pool.memoryCgroups?.version == .v1,
                    "root with cgroup v1's memory hierarchy mounted read-write: the cgroup half must run here")
            }
            guard let cgroups = pool.memoryCgroups else {
                #expect(dataLimit.contains("\(64 << 20)"), "no cgroup here, so RLIMIT_DATA: \(dataLimit)")
                print("cgroup half: skipped: no writable memory cgroup here (warm workers ran under RLIMIT_DATA)")
                return
            }
            let (version, parent) = try #require(expected, "the pool found a cgroup that locate(...) does not")
            #expect(cgroups.version == version)
            print("cgroup half: ran with \(version.rawValue) memory under \(cgroups.directory)")
            #expect(dataLimit.contains("unlimited"), "a worker in a memory cgroup gets no RLIMIT_DATA: \(dataLimit)")
            let directory = parent + "/statefn-\(getpid())-"
            let cgroup = cgroups.directory + "/\(pid)"
            #expect(cgroup.hasPrefix(directory))
            let limitFile = version == .v1 ? "/memory.limit_in_bytes" : "/memory.max"
            #expect(try String(contentsOfFile: cgroup + limitFile, encoding: .utf8) == "\(64 << 20)\n")
            #expect(try String(contentsOfFile: cgroup + "/cgroup.procs", encoding: .utf8) == "\(pid)\n")
            // The worker's own view agrees.
            let ownName = String(cgroup[try #require(cgroup.range(of: "/statefn-")).lowerBound...])
            #expect(first["reply"]?["memory_cgroup"]?.stringValue?.hasSuffix(ownName) == true, "\(first)")
            workerCgroup = cgroup

            // Over the limit, the kernel kills the worker; the pool says why, and replaces it.
            for how in ["heap", "shared"] {
                do {
                    _ = try await pool.invoke(hog, request: request(how, payload: ["how": .string(how)]))
                    Issue.record("a worker over memory_mb must not answer")
                } catch let error as WorkerError {
                    #expect(error.code == .crashed)
                    #expect(error.detail.contains("memory_mb"), "\(error.detail)")
                }
            }
            #expect(!recorder.messages(containing: "OOM killer").isEmpty)
            #expect(try await pool.invoke(hog, request: request("b"))["id"] == "b")
            #expect(!FileManager.default.fileExists(atPath: cgroup), "a reaped worker's cgroup is removed")
        }
        if let workerCgroup {
            let directory = String(workerCgroup[..<workerCgroup.lastIndex(of: "/")!])
            #expect(!FileManager.default.fileExists(atPath: directory), "a stopped pool removes its directory")
        }
        await expectNoStrays("hog", recorder)
    }

    @Test func locatesTheMemoryCgroupInBothHierarchies() {
        let hybrid = """
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
            """
        let own = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n"
        // cgroup v2 without the memory controller for children: v1's memory hierarchy.
        let v1 = MemoryCgroups.locate(mountInfo: hybrid, ownCgroups: own, subtreeControl: { _ in "hugetlb\n" })
        #expect(v1?.version == .v1)
        #expect(v1?.parent == "/sys/fs/cgroup/memory/process_api/abc")
        // With memory delegated in v2, v2 wins.
        let v2 = MemoryCgroups.locate(mountInfo: hybrid, ownCgroups: own, subtreeControl: { _ in "cpu memory\n" })
        #expect(v2?.version == .v2)
        #expect(v2?.parent == "/sys/fs/cgroup/unified")
        // A container that sees only its own part of the hierarchy (the mount's root is its cgroup).
        let container = "50 40 0:30 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
        let inside = MemoryCgroups.locate(
            mountInfo: container, ownCgroups: "0::/kubepods/pod1/app\n", subtreeControl: { _ in "memory pids" })
        #expect(inside?.parent == "/sys/fs/cgroup/app")
        // No memory controller anywhere.
        #expect(MemoryCgroups.locate(mountInfo: "", ownCgroups: own, subtreeControl: { _ in nil }) == nil)
    }

    /// cgroup v2 gives a child cgroup `memory.max` only if its parent's `cgroup.subtree_control` has `+memory`:
    /// the pool's directory enables it before any worker cgroup goes under it (this host's memory controller may
    /// be v1's, so the writes are recorded rather than made).
    @Test func aCgroupV2PoolEnablesTheMemoryControllerForItsWorkers() throws {
        let root = NSTemporaryDirectory() + "statefn-cgroup-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        var writes: [(String, String)] = []
        #expect(MemoryCgroups.makePoolDirectory(root + "/pool", version: .v2) { writes.append(($0, $1)); return true } == nil)
        #expect(writes.map(\.0) == [root + "/pool/cgroup.subtree_control"])
        #expect(writes.map(\.1) == ["+memory"])
        // Refused (a cgroup with processes of its own, say): said why, and nothing is left behind.
        let refused = MemoryCgroups.makePoolDirectory(root + "/busy", version: .v2) { _, _ in errno = EBUSY; return false }
        #expect(refused?.contains("cgroup.subtree_control") == true)
        #expect(!FileManager.default.fileExists(atPath: root + "/busy"))
        // cgroup v1 has no subtree_control: nothing written.
        writes = []
        #expect(MemoryCgroups.makePoolDirectory(root + "/v1", version: .v1) { writes.append(($0, $1)); return true } == nil)
        #expect(writes.isEmpty)
    }

    @Test func reservedAddressSpaceDoesNotCountAgainstMemoryMB() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let reserve = fixture("reserve")
            #expect(reserve.manifest.memoryMB == 512)
            let answer = try await pool.invoke(reserve, request: request("r"))
            #expect(answer["reply"]?["reserved_gib"] == 8)
        }
        await expectNoStrays("reserve", recorder)
    }

    // scripts/install-deps installs Node.js when it is missing, so this runs everywhere the tests run.
    @Test func aNodeWorkerRunsWithTheDefaultMemoryMB() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            let node = fixture("nodeecho")
            #expect(node.manifest.memoryMB == 512)
            let answer = try await pool.invoke(node, request: request("n", payload: ["x": 1]))
            #expect(answer["reply"]?["payload"] == ["x": 1])
        }
        await expectNoStrays("nodeecho", recorder)
    }

    @Test func aWarmWorkerThatExitsAfterEveryRequestStillAnswersEveryRequest() async throws {
        let recorder = LogRecorder()
        var pids: Set<Int64> = []
        try await withPool(recorder) { pool in
            let oneshot = fixture("oneshot")
            for index in 0..<15 {
                let answer = try await pool.invoke(oneshot, request: request("o\(index)"))
                pids.insert(try #require(answer["reply"]?["pid"]?.integerValue))
            }
            #expect(pids.count == 15)
            let status = try #require(await pool.status().first { $0.function == "oneshot" })
            #expect(status.crashes == 0)
        }
        #expect(spawnedPids(of: "oneshot", in: recorder).isSuperset(of: pids.map { Int32($0) }))
        await expectNoStrays("oneshot", recorder)
    }

    @Test func aWorkerThatNeverSaysReadyIsKilledAtItsInitTimeout() async throws {
        let recorder = LogRecorder()
        try await withPool(recorder) { pool in
            #expect(fixture("silent").manifest.initTimeoutMs == 500)
            // Five seconds, so that a loaded machine still shows the worker to the test before it is killed.
            let silent = fixture("silent") { $0.initTimeoutMs = 5000 }
            let started = ContinuousClock.now
            async let outcome = failure { try await pool.invoke(silent, request: request("i")) }
            // Before its init timeout: the pool's worker, in a group of its own, now running sleep (its command line
            // no longer names the fixture).
            let sighted = await sightWorker(of: "silent", in: pool, running: "sleep")
            let error = await outcome
            let worker = try #require(sighted, "the worker was never seen running sleep")
            #expect(error?.code == .crashed)
            #expect(error?.detail.contains("init_timeout_ms") == true, "\(String(describing: error))")
            #expect(ContinuousClock.now - started >= .milliseconds(4900), "killed before its init timeout")
            #expect(await eventually { remains(of: worker).isEmpty }, "left: \(remains(of: worker))")
            // With the handshake required, a worker that does announce itself serves.
            let echo = fixture("echo") { $0.initTimeoutMs = 10_000 }
            #expect(try await pool.invoke(echo, request: request("e"))["id"] == "e")
        }
        await expectNoStrays("silent", recorder)
    }
}
