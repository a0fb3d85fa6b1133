// Who workers run as and what they may touch (DESIGN.md section 10), decided once at start-up: the account (as
// root), the scratch directories, Landlock, and the gateway as their subreaper. Each layer that cannot be had here
// is said at start-up; the others stay.
import ArgumentParser
import Foundation
import Logging
import StatefnPostgres
import StatefnWorkers

/// The sandbox for `serve`'s workers. `clusterDirectory` is the embedded cluster's, whose account workers must
/// not share.
func workerSandbox(
    user: String, explicitUser: Bool, functionsDirectory: String, dataDirectory: String, clusterOwner clusterDirectory: String?,
    logger: Logger
) throws -> WorkerSandbox {
    var sandbox = WorkerSandbox()
    try makeDataDirectoryPrivate(dataDirectory)
    var workerAccount: ServerAccount?
    if getuid() == 0 {
        let (account, created) = try ServerAccount.ensureSystem(user)
        if created { logger.notice("created the system account \(user) for workers") }
        guard account.uid != 0 else { throw ValidationError("--worker-user \(user) has uid 0: workers need an unprivileged account") }
        if let clusterDirectory, let owner = ownerID(of: clusterDirectory), owner == account.uid {
            throw ValidationError(
                "--worker-user \(user) runs the embedded PostgreSQL: workers need an account of their own")
        }
        if let blocked = account.firstUnsearchableDirectory(on: functionsDirectory, including: true) {
            throw ValidationError(
                "workers run as \(user), who cannot reach the functions directory \(functionsDirectory) because"
                    + " \(blocked) is not searchable by it: allow it (chmod o+x \(blocked)) or put the functions"
                    + " elsewhere")
        }
        workerAccount = account
        sandbox.account = WorkerSandbox.Account(name: account.name, uid: account.uid, gid: account.gid)
        logger.notice(
            "workers run as the account \(account.name)",
            metadata: ["worker_user": "\(account.name)", "uid": "\(account.uid)", "gid": "\(account.gid)"])
    } else {
        let me = ServerAccount.withID(getuid())?.name ?? "uid \(getuid())"
        logger.notice(
            """
            statefn is not running as root, so workers run as its own account \(me): they cannot be given another; \
            the gateway stays undumpable, and Landlock, where the kernel has it, keeps them out of its files
            """,
            metadata: ["uid": "\(getuid())"])
        if explicitUser { logger.warning("--worker-user \(user) is ignored: only root can switch users") }
    }

    sandbox.scratchRoot = try scratchRoot(dataDirectory: dataDirectory, account: workerAccount)
    switch WorkerSandbox.landlockAvailability() {
    case .success(let abi):
        sandbox.landlockABI = abi
        sandbox.readablePaths = [functionsDirectory] + WorkerSandbox.systemPaths
        // Signal scoping came with ABI 6 (Linux 6.12): before it, a worker of the gateway's own account may still
        // signal it.
        let signals = abi >= 6 ? "and signal only their own processes" : "(signals are not scoped below ABI 6)"
        logger.info(
            """
            Landlock confines workers: they read the functions directory and the system's files, write only \
            their scratch directory, \(signals)
            """, metadata: ["landlock_abi": "\(abi)"])
    case .failure(let reason):
        if sandbox.account == nil {
            logger.warning(
                """
                \(reason.detail), and workers run as the gateway's own account: they can read whatever it can \
                (the data directory, the dev key, the cluster's password file) and signal it
                """)
        } else {
            logger.warning("\(reason.detail): workers are not confined to their directories (the other layers stay)")
        }
    }
    // After the embedded PostgreSQL has started: its server, orphaned by pg_ctl, must not come to us.
    if getpid() == 1 {
        logger.warning(
            """
            statefn is PID 1: run it under an init (tini, docker run --init); a worker's descendant that leaves its \
            process group is not killed with it
            """)
    } else if !sandbox.becomeSubreaper() {
        logger.warning("cannot make the gateway a child subreaper: a worker's descendant that calls setsid outlives it")
    }
    return sandbox
}

/// `<data-dir>` exists and only its owner can list it: the dev key, the cluster's password and the scratch
/// directories are there. Others may still pass through (mode 0711) to what is theirs inside, the cluster's
/// server account to the cluster and workers to their scratch directories.
private func makeDataDirectoryPrivate(_ path: String) throws {
    do {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    } catch {
        throw ValidationError("cannot create the data directory \(path): \(error)")
    }
    var info = stat()
    guard stat(path, &info) == 0 else { throw ValidationError("cannot read the data directory \(path)") }
    let mode = info.st_mode & 0o7777
    if mode & 0o066 != 0 { chmod(path, mode & ~0o066) }
}

/// Where each function's scratch directory goes: `<data-dir>/scratch`, or, when the worker account cannot pass
/// through to `<data-dir>` (a checkout under /root, say), /var/lib/statefn/<data-dir path>/scratch, as for the
/// embedded cluster. Owned by us, mode 0711: a worker finds its own directory there and lists none.
private func scratchRoot(dataDirectory: String, account: ServerAccount?) throws -> String {
    var root = dataDirectory + "/scratch"
    if let account, account.firstUnsearchableDirectory(on: root) != nil {
        root = systemDirectory(for: dataDirectory, "scratch")
    }
    do {
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    } catch {
        throw ValidationError("cannot create the scratch directory \(root): \(error)")
    }
    var info = stat()
    guard lstat(root, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == getuid() else {
        throw ValidationError("\(root) is not a directory of this account")
    }
    chmod(root, account == nil ? 0o700 : 0o711)
    return root
}

private func ownerID(of path: String) -> uid_t? {
    var info = stat()
    return stat(path, &info) == 0 ? info.st_uid : nil
}
