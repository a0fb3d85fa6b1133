// Starting a worker: clone and exec into its own process group (as posix_spawn would), with only its three pipes
// open, default signal handling, and only the environment its manifest grants. Foundation's Process would do none
// of this.
import CLinux
import Glibc

/// A freshly spawned worker: our ends of its pipes (non-blocking, close-on-exec) and its pidfd. The caller owns
/// every descriptor and must reap the pid.
struct SpawnedProcess {
    let pid: pid_t
    /// -1 once `writeFirstLine` has written a fork run's whole request and closed it.
    private(set) var stdin: Int32
    let stdout: Int32
    let stderr: Int32
    let pidfd: Int32
    /// The memory cgroup that enforces its `memory_mb`, if it got one; otherwise RLIMIT_DATA does.
    let cgroup: WorkerCgroup?

    /// Writes as much of `line` to stdin as the new pipe takes at once (64 KiB on Linux, so a request line usually
    /// goes whole) and returns how many bytes that was; with `thenClose`, a whole line is followed by end of file.
    /// What is left, if anything, the worker's event loop writes as the pipe drains.
    mutating func writeFirstLine(_ line: [UInt8], thenClose: Bool) -> Int {
        // EAGAIN: the rest goes later. EPIPE: the event loop's write will see it too.
        let written = line.withUnsafeBytes { System.writeAll(stdin, $0).written }
        if written == line.count && thenClose {
            System.close(stdin)
            stdin = -1
        }
        return written
    }
}

enum Spawner {
    /// Not the gateway's PATH: that may point at per-user shims (pyenv, nvm) that need the gateway's HOME.
    static let defaultPath = "/usr/local/bin:/usr/bin:/bin"

    /// The worker's entire environment: its manifest's `env`, plus PATH, LANG and HOME (its scratch directory,
    /// also TMPDIR, when it has one) unless the manifest sets them. Nothing is inherited, so DATABASE_URL and
    /// STATEFN_* never reach a worker.
    static func environment(for function: FunctionDefinition, scratch: String? = nil) -> [String] {
        var env = ["PATH": defaultPath, "LANG": "C.UTF-8", "HOME": scratch ?? function.workingDirectory]
        if let scratch { env["TMPDIR"] = scratch }
        env.merge(function.manifest.env) { _, fromManifest in fromManifest }
        return env.map { "\($0.key)=\($0.value)" }.sorted()
    }

    /// Starts `function`'s executable; wraps `clinux_spawn_worker` (clone(2) and execve(2), as posix_spawn(3)
    /// would, minus its per-spawn stack mapping) and prlimit(2). With `cgroups`, `memory_mb` goes on a memory
    /// cgroup of the worker's own, and on RLIMIT_DATA only if that fails. With `sandbox`, the child takes the
    /// worker account and the function's Landlock ruleset before exec, and its scratch directory is its HOME.
    static func spawn(
        _ function: FunctionDefinition, cgroups: MemoryCgroups? = nil, sandbox: SandboxPreparation? = nil
    ) throws(WorkerError) -> SpawnedProcess {
        let prepared = try sandbox?.prepare(function)
        var identity =
            prepared.flatMap { sandbox?.identity($0) } ?? clinux_worker_identity(uid: -1, gid: -1, landlock: -1)
        var opened: [Int32] = []
        func closeOpened() { for fd in opened { System.close(fd) } }
        func makePipe() throws(WorkerError) -> (read: Int32, write: Int32) {
            switch System.pipe() {
            case .success(let pipe):
                opened += [pipe.read, pipe.write]
                return pipe
            case .failure(let error):
                throw WorkerError(.spawnFailed, "pipe2: \(error)")
            }
        }
        let input: (read: Int32, write: Int32)
        let output: (read: Int32, write: Int32)
        let errors: (read: Int32, write: Int32)
        do {
            input = try makePipe()
            output = try makePipe()
            errors = try makePipe()
        } catch {
            closeOpened()
            throw error
        }

        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(function.executable), nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment(for: function, scratch: prepared?.scratch).map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }

        var pidfd: Int32 = -1
        var pid: pid_t = 0
        // ETXTBSY: something still has the executable open for writing. A deploy that is finishing its copy, or a
        // process started a moment ago by any thread of this one, which holds a copy of every descriptor until its
        // own exec closes them (the classic race of writing and running an executable in one process). Both pass
        // within milliseconds; a writer that does not gets the error after about a quarter of a second.
        for pauseMs in [1, 2, 4, 8, 16, 32, 64, 100, 0] {
            pid = clinux_spawn_worker(
                function.executable, argv, envp, function.workingDirectory, input.read, output.write, errors.write,
                &identity, &pidfd)
            guard pid == -ETXTBSY, pauseMs > 0 else { break }
            usleep(UInt32(pauseMs * 1000))
        }
        for fd in [input.read, output.write, errors.write] { System.close(fd) }
        guard pid > 0 else {
            for fd in [input.write, output.read, errors.read] { System.close(fd) }
            throw WorkerError(.spawnFailed, "cannot start \(function.executable): \(Errno(code: -pid))")
        }
        // The spawn returns once the child has exec'd (CLONE_VFORK), so the limit lands before the new program can
        // have allocated much.
        let limit = function.manifest.memoryMB << 20
        let cgroup = cgroups?.confine(pid, bytes: limit)
        if cgroup == nil { _ = clinux_limit_data(pid, UInt64(limit)) }
        for fd in [input.write, output.read, errors.read] { System.setNonBlocking(fd) }
        return SpawnedProcess(
            pid: pid, stdin: input.write, stdout: output.read, stderr: errors.read, pidfd: pidfd, cgroup: cgroup)
    }
}
