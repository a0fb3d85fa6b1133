// The threads that start worker processes: a spawn blocks its caller until the child has exec'd (CLONE_VFORK), so
// spawns run here, not on the I/O thread, an HTTP thread or Swift's cooperative pool.
import CLinux
import Dispatch
import Glibc
import Synchronization

/// A few long-lived threads, shared by every worker pool in the process, that run spawn jobs in arrival order.
///
/// A thread that spawns a process is its parent, and gets SIGCHLD when it exits. SIGCHLD's default action is to
/// ignore it, and the kernel then drops it at once, but only if the parent thread does not block it: otherwise
/// it wakes some other thread (the main thread, in `sigsuspend`) just to discard it, once per worker exit.
/// Dispatch's threads block every signal, so these threads are our own and leave SIGCHLD open; they never exit,
/// so their children are never handed to another thread.
final class SpawnThreads: Sendable {
    static let shared = SpawnThreads(count: 4)

    private let jobs = Mutex<[@Sendable () -> Void]>([])
    private let available = DispatchSemaphore(value: 0)

    private init(count: Int) {
        // A new thread starts with its creator's signal mask: create them under the mask they keep, which blocks
        // what a Dispatch thread blocks but for SIGCHLD and the signals a fault raises.
        var mask = sigset_t()
        sigfillset(&mask)
        for open in [SIGCHLD, SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS, SIGPROF] { sigdelset(&mask, open) }
        var creatorMask = sigset_t()
        pthread_sigmask(SIG_SETMASK, &mask, &creatorMask)
        defer { pthread_sigmask(SIG_SETMASK, &creatorMask, nil) }
        for _ in 0..<count { startThread { self.run() } }
    }

    /// Runs `job` on the next free spawn thread.
    func submit(_ job: @escaping @Sendable () -> Void) {
        jobs.withLock { $0.append(job) }
        available.signal()
    }

    private func run() {
        _ = clinux_name_thread("statefn-spawn")
        while true {
            available.wait()
            let job = jobs.withLock { $0.removeFirst() }
            job()
        }
    }
}
