// Starting a worker: posix_spawn into its own process group, with only its three pipes open, default signal
// handling, and only the environment its manifest grants. Foundation's Process would do none of this.
import CLinux
import Glibc

/// How a worker process ended, decoded from its wait status.
struct ExitStatus: CustomStringConvertible, Equatable {
    let raw: Int32
    var isCleanExit: Bool { raw == 0 }
    var description: String {
        // WIFEXITED, WEXITSTATUS and WTERMSIG are macros Swift cannot see; this is their glibc definition.
        let signal = raw & 0x7F
        return signal == 0 ? "exited with status \((raw >> 8) & 0xFF)" : "killed by signal \(signal)"
    }
}

/// A freshly spawned worker: our ends of its pipes (non-blocking, close-on-exec) and its pidfd. The caller owns
/// every descriptor and must reap the pid.
struct SpawnedProcess {
    let pid: pid_t
    let stdin: Int32
    let stdout: Int32
    let stderr: Int32
    let pidfd: Int32
}

enum Spawner {
    /// Not the gateway's PATH: that may point at per-user shims (pyenv, nvm) that need the gateway's HOME.
    static let defaultPath = "/usr/local/bin:/usr/bin:/bin"

    /// The worker's entire environment: its manifest's `env`, plus PATH, LANG and HOME unless the manifest sets
    /// them. Nothing is inherited, so DATABASE_URL and STATEFN_* never reach a worker.
    static func environment(for function: FunctionDefinition) -> [String] {
        var env = ["PATH": defaultPath, "LANG": "C.UTF-8", "HOME": function.workingDirectory]
        env.merge(function.manifest.env) { _, fromManifest in fromManifest }
        return env.map { "\($0.key)=\($0.value)" }.sorted()
    }

    /// Starts `function`'s executable; wraps posix_spawn(3) and pidfd_open(2).
    static func spawn(_ function: FunctionDefinition) throws(WorkerError) -> SpawnedProcess {
        var opened: [Int32] = []
        func closeOpened() { for fd in opened { close(fd) } }
        func makePipe() throws(WorkerError) -> (read: Int32, write: Int32) {
            var fds: [Int32] = [-1, -1]
            guard clinux_pipe2(&fds, O_CLOEXEC) == 0 else {
                throw WorkerError(.spawnFailed, "pipe2: \(errorText(errno))")
            }
            opened += fds
            return (fds[0], fds[1])
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

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, input.read, 0)
        posix_spawn_file_actions_adddup2(&actions, output.write, 1)
        posix_spawn_file_actions_adddup2(&actions, errors.write, 2)
        clinux_spawn_addchdir(&actions, function.workingDirectory)
        clinux_spawn_addclosefrom(&actions, 3)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        // Dispositions the gateway set to SIG_IGN (SIGPIPE, say) would otherwise survive exec.
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)

        let argv: [UnsafeMutablePointer<CChar>?] = [strdup(function.executable), nil]
        let envp: [UnsafeMutablePointer<CChar>?] = environment(for: function).map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }

        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, function.executable, &actions, &attributes, argv, envp)
        close(input.read)
        close(output.write)
        close(errors.write)
        guard spawned == 0 else {
            close(input.write)
            close(output.read)
            close(errors.read)
            throw WorkerError(.spawnFailed, "cannot start \(function.executable): \(errorText(spawned))")
        }
        let pidfd = clinux_pidfd_open(pid)
        if pidfd < 0 {
            let error = errno
            kill(-pid, SIGKILL)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            close(input.write)
            close(output.read)
            close(errors.read)
            throw WorkerError(.spawnFailed, "pidfd_open: \(errorText(error))")
        }
        // posix_spawn returns once the child has exec'd (glibc spawns with CLONE_VFORK), so the limit lands
        // before the new program can have allocated much.
        _ = clinux_limit_data(pid, UInt64(function.manifest.memoryMB) << 20)
        // A new pipe's status flags are only its access mode, which F_SETFL leaves alone.
        for fd in [input.write, output.read, errors.read] { _ = fcntl(fd, F_SETFL, O_NONBLOCK) }
        return SpawnedProcess(pid: pid, stdin: input.write, stdout: output.read, stderr: errors.read, pidfd: pidfd)
    }
}

/// The text for an errno value; wraps strerror(3).
func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }
