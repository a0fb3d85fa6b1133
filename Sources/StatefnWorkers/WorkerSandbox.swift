// What a worker may touch (DESIGN.md section 10): the account it runs as, its private scratch directory (its HOME
// and TMPDIR), and, where the kernel has Landlock, the only paths it may open. Decided once at start-up; each
// function's scratch directory and ruleset are made on its first spawn and kept.
import CLinux
import Glibc
import Synchronization

/// How workers are confined. `WorkerSandbox()` confines nothing: workers run as the gateway's account with their
/// function's directory as HOME, as the unit tests' pools do.
public struct WorkerSandbox: Sendable {
    /// An unprivileged account workers switch to before exec (only root can switch).
    public struct Account: Sendable, Equatable {
        public var name: String
        public var uid: uid_t
        public var gid: gid_t
        public init(name: String, uid: uid_t, gid: gid_t) {
            self.name = name
            self.uid = uid
            self.gid = gid
        }
    }

    public var account: Account?
    /// `<scratchRoot>/<function>`, made on first use (mode 0700, the worker account's), is each function's HOME,
    /// TMPDIR and only writable directory. nil: HOME is the function's directory, as before any sandbox.
    public var scratchRoot: String?
    /// The Landlock ABI to confine workers with; nil when the kernel has none.
    public var landlockABI: Int?
    /// What a worker may read and execute under Landlock: the functions directory and the system's files.
    public var readablePaths: [String] = []
    /// Set once the gateway is a child subreaper (`becomeSubreaper`): orphans of workers come to it, and the pool
    /// kills and reaps them.
    public var reapsOrphans = false

    public init(account: Account? = nil, scratchRoot: String? = nil, landlockABI: Int? = nil, readablePaths: [String] = []) {
        self.account = account
        self.scratchRoot = scratchRoot
        self.landlockABI = landlockABI
        self.readablePaths = readablePaths
    }

    /// The system's read-only trees a runtime needs (interpreters, libraries, certificates, /proc/self); the
    /// functions directory is added to them. Of /etc only what runtimes read (`etcEntries`): a key, a JWKS file or
    /// a database client certificate kept there stays the gateway's.
    public static var systemPaths: [String] {
        ["/usr", "/lib", "/lib32", "/lib64", "/libx32", "/bin", "/sbin", "/opt", "/proc", "/sys", "/dev",
            "/run/systemd/resolve"] + etcEntries().map { "/etc/" + $0 }
    }

    /// The entries of /etc a worker may read: the dynamic linker's cache, time zone, name resolution, accounts,
    /// certificates, MIME types, and the configuration of language runtimes (python3*, perl, java*, node*, ruby*).
    static func etcEntries(in directory: String = "/etc") -> [String] {
        let names: Set<String> = [
            "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "ssl", "ca-certificates",
            "ca-certificates.conf", "pki", "crypto-policies", "hosts", "resolv.conf", "nsswitch.conf", "gai.conf",
            "host.conf", "services", "protocols", "networks", "passwd", "group", "alternatives", "mime.types",
            "magic", "magic.mime", "os-release", "debian_version", "locale.alias", "machine-id",
        ]
        let prefixes = ["python", "perl", "java", "node", "ruby"]
        guard let entries = System.directoryEntries(directory) else { return [] }
        return entries.filter { name in names.contains(name) || prefixes.contains { name.hasPrefix($0) } }.sorted()
    }
    /// Device files a worker may also write (`> /dev/null`), on top of reading /dev.
    /// Not /dev/tty: a worker has no controlling terminal (it leads a session of its own), and must not reach the
    /// one the gateway was started from.
    static let writableDevices = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]

    /// The Landlock ABI version this kernel offers, or why there is none.
    public static func landlockAvailability() -> Result<Int, WorkerError> {
        let abi = clinux_landlock_abi()
        if abi >= 1 { return .success(Int(abi)) }
        let reason = -abi == ENOSYS ? "the kernel was built without it" : -abi == EOPNOTSUPP ? "it is disabled at boot" : "\(Errno(code: -abi))"
        return .failure(WorkerError(.spawnFailed, "Landlock is not available: \(reason)"))
    }

    /// Makes this process undumpable: `/proc/<pid>/environ` and `mem`, and ptrace, are closed to processes of
    /// the same account. Call first thing, before any secret is read.
    public static func becomeUndumpable() -> Bool { clinux_set_undumpable() == 0 }

    /// Makes this process a child subreaper, so a worker's descendant that leaves its process group (`setsid`)
    /// comes back to it when the worker exits, to be killed. Call after any daemon this process starts itself
    /// (the embedded PostgreSQL) is running, or that daemon would count as an orphan.
    public mutating func becomeSubreaper() -> Bool {
        // As PID 1 every orphan of the system is already ours (the embedded PostgreSQL's server among them), and
        // telling a worker's from the others is an init's job: run statefn under one (tini, docker --init).
        guard getpid() != 1 else { return false }
        reapsOrphans = clinux_set_child_subreaper() == 0
        return reapsOrphans
    }
}

/// Each function's scratch directory and Landlock ruleset, made once per function name and kept: a ruleset is a
/// descriptor, close-on-exec, that every spawn of the function hands its child.
final class SandboxPreparation: Sendable {
    let sandbox: WorkerSandbox
    private let prepared = Mutex<[String: Prepared]>([:])

    struct Prepared: Sendable {
        var scratch: String?
        var ruleset: Int32
    }

    init(_ sandbox: WorkerSandbox) { self.sandbox = sandbox }

    /// The function's scratch directory and ruleset, made now if this is its first spawn. Made under the lock:
    /// the first spawns of a function race on the spawn threads, and one must not see another's directory between
    /// its mkdir and its chown.
    func prepare(_ function: FunctionDefinition) throws(WorkerError) -> Prepared {
        try prepared.withLock { (table: inout [String: Prepared]) throws(WorkerError) -> Prepared in
            if let done = table[function.name] { return done }
            var made = Prepared(scratch: nil, ruleset: -1)
            if let root = sandbox.scratchRoot {
                made.scratch = try makeScratch(root + "/" + function.name)
            }
            if let abi = sandbox.landlockABI {
                made.ruleset = try ruleset(abi: abi, scratch: made.scratch)
            }
            table[function.name] = made
            return made
        }
    }

    /// The identity `clinux_spawn_worker` applies in the child.
    func identity(_ prepared: Prepared) -> clinux_worker_identity {
        clinux_worker_identity(
            uid: sandbox.account.map { Int32(bitPattern: $0.uid) } ?? -1,
            gid: sandbox.account.map { Int32(bitPattern: $0.gid) } ?? -1, landlock: prepared.ruleset)
    }

    /// A directory only the worker account may use. The scratch root is writable by the gateway's account alone,
    /// so whatever is there was made by a statefn (this one, another replica on the same data directory that is
    /// between its mkdir and its chown, or one run with another --worker-user): it must be a real directory, and
    /// it is given to this account.
    private func makeScratch(_ path: String) throws(WorkerError) -> String {
        guard mkdir(path, 0o700) == 0 || errno == EEXIST else {
            throw WorkerError(.spawnFailed, "cannot create the scratch directory \(path): \(Errno.current)")
        }
        var info = stat()
        guard lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw WorkerError(.spawnFailed, "the scratch directory \(path) is not a directory")
        }
        if let account = sandbox.account, info.st_uid != account.uid || info.st_gid != account.gid {
            guard chown(path, account.uid, account.gid) == 0 else {
                throw WorkerError(.spawnFailed, "cannot give \(path) to \(account.name): \(Errno.current)")
            }
        }
        if info.st_mode & 0o077 != 0 { chmod(path, 0o700) }
        return path
    }

    private func ruleset(abi: Int, scratch: String?) throws(WorkerError) -> Int32 {
        let read = sandbox.readablePaths
        let write = Array(scratch.map { [$0] } ?? []) + WorkerSandbox.writableDevices
        let readC = read.map { UnsafePointer(strdup($0)) }
        let writeC = write.map { UnsafePointer(strdup($0)) }
        defer { (readC + writeC).forEach { free(UnsafeMutablePointer(mutating: $0)) } }
        let fd = clinux_landlock_ruleset(Int32(abi), readC, Int32(readC.count), writeC, Int32(writeC.count))
        guard fd >= 0 else { throw WorkerError(.spawnFailed, "cannot make a Landlock ruleset: \(Errno(code: -fd))") }
        return fd
    }
}
