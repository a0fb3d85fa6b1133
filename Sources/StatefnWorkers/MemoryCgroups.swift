// memory_mb through the kernel's memory controller, where a memory cgroup is writable (DESIGN.md section 3): each
// warm worker gets a cgroup of its own, under one per gateway, and the kernel enforces the limit on everything the
// worker and its children touch (heap, shared mappings, page tables), with no address-space limit that would break
// V8, the JVM or Go. Elsewhere RLIMIT_DATA does it (`Spawner`); the RSS watch runs either way.
import Glibc
import Logging
import Synchronization

private let poolCount = Atomic<Int>(1)

/// A worker pool's directory in a writable memory cgroup hierarchy, `<mount>/<own cgroup>/statefn-<pid>-<n>`.
final class MemoryCgroups: Sendable {
    enum Version: String, Sendable {
        case v1 = "cgroup v1"
        case v2 = "cgroup v2"
    }

    let version: Version
    let directory: String

    private init(version: Version, directory: String) {
        self.version = version
        self.directory = directory
    }

    /// Where this process's memory cgroup is, from /proc/self/mountinfo and /proc/self/cgroup: the directory under
    /// which worker cgroups can go, and the hierarchy's version. cgroup v2 qualifies only if `memory` is already in
    /// that directory's `cgroup.subtree_control` (the root cgroup, or one delegated with it), since a cgroup with
    /// processes in it cannot enable it; v1 needs the memory controller mounted. Pure, for tests.
    static func locate(mountInfo: String, ownCgroups: String, subtreeControl: (String) -> String?)
        -> (version: Version, parent: String)?
    {
        var v1: (mount: String, root: String)?
        var v2: (mount: String, root: String)?
        for line in mountInfo.split(separator: "\n") {
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let fields = halves[0].split(separator: " ")
            let after = halves[1].split(separator: " ")
            guard fields.count >= 5, after.count >= 3 else { continue }
            let (root, mount) = (String(fields[3]), String(fields[4]))
            if after[0] == "cgroup2" {
                v2 = (mount, root)
            } else if after[0] == "cgroup", after[2].split(separator: ",").contains("memory") {
                v1 = (mount, root)
            }
        }
        var ownV1: String?
        var ownV2: String?
        for line in ownCgroups.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            if parts[0] == "0" && parts[1].isEmpty { ownV2 = String(parts[2]) }
            if parts[1].split(separator: ",").contains("memory") { ownV1 = String(parts[2]) }
        }
        func directory(_ mount: String, _ root: String, _ own: String) -> String? {
            // The mount shows the hierarchy from `root` down (a container's own cgroup, say).
            guard own == root || root == "/" || own.hasPrefix(root + "/") else { return nil }
            let relative = root == "/" ? own : String(own.dropFirst(root.count))
            return relative == "/" || relative.isEmpty ? mount : mount + relative
        }
        if let (mount, root) = v2, let own = ownV2, let parent = directory(mount, root, own),
            let control = subtreeControl(parent), control.split(whereSeparator: \.isWhitespace).contains("memory")
        {
            return (.v2, parent)
        }
        if let (mount, root) = v1, let own = ownV1, let parent = directory(mount, root, own) {
            return (.v1, parent)
        }
        return nil
    }

    /// This process's cgroups, or nil (logged) if no memory cgroup is writable here. Directories left by gateways
    /// that died without cleaning up are removed first, once their workers are gone.
    static func open(logger: Logger) -> MemoryCgroups? {
        guard let mountInfo = readText("/proc/self/mountinfo"), let own = readText("/proc/self/cgroup"),
            let (version, parent) = locate(
                mountInfo: mountInfo, ownCgroups: own, subtreeControl: { readText($0 + "/cgroup.subtree_control") }
            )
        else {
            logger.notice("memory_mb: no memory cgroup here; RLIMIT_DATA and the RSS watch enforce it")
            return nil
        }
        for stale in subdirectories(of: parent) where stale.hasPrefix("statefn-") {
            let owner = stale.dropFirst("statefn-".count).prefix { $0 != "-" }
            guard let pid = pid_t(owner), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH else { continue }
            removeTree(parent + "/" + stale)
        }
        // One directory per pool (a test process runs many), named for the process, so that a later gateway can
        // tell a dead one's leftovers.
        let directory = parent + "/statefn-\(getpid())-\(poolCount.wrappingAdd(1, ordering: .relaxed).oldValue)"
        if let problem = makePoolDirectory(directory, version: version, write: writeWholeFile) {
            logger.notice("memory_mb: \(problem); RLIMIT_DATA and the RSS watch enforce it")
            return nil
        }
        logger.info("memory_mb: each warm worker gets its own \(version.rawValue) under \(directory)")
        return MemoryCgroups(version: version, directory: directory)
    }

    /// Makes the pool's directory. On cgroup v2 a worker's cgroup under it has a `memory.max` only once the pool's
    /// `cgroup.subtree_control` has `+memory` (the directory holds no process, so the kernel allows it): that is
    /// written before any worker cgroup is made. Returns what went wrong, with nothing left behind, or nil.
    static func makePoolDirectory(_ directory: String, version: Version, write: (String, String) -> Bool) -> String? {
        guard mkdir(directory, 0o755) == 0 else { return "cannot create \(directory) (\(Errno.current))" }
        if version == .v2, !write(directory + "/cgroup.subtree_control", "+memory") {
            let reason = Errno.current
            rmdir(directory)
            return "cannot enable the memory controller in \(directory)/cgroup.subtree_control (\(reason))"
        }
        return nil
    }

    /// Moves `pid` into a new cgroup of its own limited to `bytes`, swap included; nil (and nothing left behind) if
    /// any step fails, and the caller falls back to RLIMIT_DATA.
    func confine(_ pid: pid_t, bytes: Int) -> WorkerCgroup? {
        let path = directory + "/\(pid)"
        guard mkdir(path, 0o755) == 0 else { return nil }
        let limits: [(String, String)] =
            switch version {
            case .v1: [("memory.limit_in_bytes", "\(bytes)"), ("memory.memsw.limit_in_bytes", "\(bytes)")]
            case .v2: [("memory.max", "\(bytes)"), ("memory.swap.max", "0")]
            }
        // The swap limit exists only where swap is accounted; without it there is nothing to limit.
        let written =
            writeWholeFile(path + "/" + limits[0].0, limits[0].1)
            && (access(path + "/" + limits[1].0, F_OK) != 0 || writeWholeFile(path + "/" + limits[1].0, limits[1].1))
            && writeWholeFile(path + "/cgroup.procs", "\(pid)")
        guard written else {
            rmdir(path)
            return nil
        }
        return WorkerCgroup(path: path, version: version)
    }

    /// Removes the gateway's directory once the pool has stopped: whatever worker cgroup is left (one whose
    /// stray grandchild outlived its kill) goes too, if it is empty by now.
    func removeAll() {
        Self.removeTree(directory)
    }

    private static func removeTree(_ path: String) {
        for child in subdirectories(of: path) { rmdir(path + "/" + child) }
        rmdir(path)
    }

    private static func subdirectories(of path: String) -> [String] {
        System.directoryEntries(path, directoriesOnly: true) ?? []
    }
}

/// One worker's memory cgroup.
struct WorkerCgroup: Sendable {
    let path: String
    let version: MemoryCgroups.Version

    /// After the worker is reaped: whether the kernel's OOM killer killed anything in it (the worker went over
    /// `memory_mb`). Kills what is left in it (a grandchild that left the process group) and removes it.
    func release() -> Bool {
        let events = version == .v1 ? "/memory.oom_control" : "/memory.events"
        let oomKilled =
            readText(path + events)?.split(separator: "\n").contains { line in
                line.hasPrefix("oom_kill ") && line.split(separator: " ").last.flatMap { Int($0) } ?? 0 > 0
            } ?? false
        for _ in 0..<3 {
            if rmdir(path) == 0 || errno != EBUSY { break }
            let procs = readText(path + "/cgroup.procs") ?? ""
            for pid in procs.split(separator: "\n").compactMap({ pid_t($0) }) { kill(pid, SIGKILL) }
            usleep(1_000)
        }
        return oomKilled
    }
}
