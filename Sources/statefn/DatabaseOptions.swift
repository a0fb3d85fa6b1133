// Where the database is: DATABASE_URL, or else the embedded PostgreSQL cluster under --data-dir.
import ArgumentParser
import Logging
import StatefnCore
import StatefnPostgres

#if canImport(Glibc)
    import Glibc
#endif

struct DatabaseOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Directory for local data; without DATABASE_URL the embedded PostgreSQL cluster lives in <data-dir>/pg (env STATEFN_DATA_DIR).",
            valueName: "dir"))
    var dataDir: String = Environment.value("STATEFN_DATA_DIR") ?? ".statefn"

    @Option(
        help: ArgumentHelp(
            "Directory of NNNN_name.sql migrations (env STATEFN_MIGRATIONS_DIR; default: ./migrations, or the one beside the binary).",
            valueName: "dir"))
    var migrationsDir: String = Environment.value("STATEFN_MIGRATIONS_DIR") ?? ""

    @Option(help: ArgumentHelp("Database connections in the pool (env STATEFN_DB_POOL_SIZE).", valueName: "n"))
    var dbPoolSize: Int = Environment.value("STATEFN_DB_POOL_SIZE").flatMap { Int($0) } ?? 16

    /// The database to use, starting the embedded cluster when DATABASE_URL is not set.
    /// With `leaveRunning`, an embedded cluster that was already running (a gateway's) is returned as nil, so the
    /// caller does not stop it.
    func open(logger: Logger, leaveRunning: Bool = false) throws -> (config: PostgresConfig, embedded: EmbeddedPostgres?) {
        if let url = Environment.value("DATABASE_URL") {
            return (try PostgresConfig(url), nil)
        }
        let directory = clusterDirectory()
        let embedded = EmbeddedPostgres(directory: directory, logger: logger)
        if leaveRunning, embedded.isRunning {
            return (try PostgresConfig(try embedded.start()), nil)
        }
        let conninfo = try embedded.start()
        logger.info(
            "embedded PostgreSQL running", metadata: ["directory": "\(directory)", "conninfo": "\(conninfo)"])
        return (try PostgresConfig(conninfo), embedded)
    }

    /// `<data-dir>/pg`, unless we are root and PostgreSQL's unprivileged account could not reach it (a checkout
    /// under /root, say): then /var/lib/statefn/<data-dir path>/pg, so the cluster still survives restarts.
    func clusterDirectory() -> String {
        let dataDirectory = absolutePath(dataDir)
        guard getuid() == 0, !othersCanTraverse(dataDirectory) else { return dataDirectory + "/pg" }
        let key = dataDirectory.split(separator: "/").joined(separator: "_")
        return "/var/lib/statefn/\(key)/pg"
    }

    func migrator() throws -> Migrator {
        if !migrationsDir.isEmpty { return try Migrator(directory: migrationsDir) }
        for candidate in Self.migrationCandidates() where isDirectory(candidate) {
            return try Migrator(directory: candidate)
        }
        throw ValidationError("no migrations directory found; pass --migrations-dir")
    }

    /// ./migrations, then <prefix>/share/statefn/migrations for an installed binary, then the source tree the
    /// binary was built in (.build/<triple>/<config>/statefn).
    private static func migrationCandidates() -> [String] {
        var candidates = ["migrations"]
        if let executable = executablePath() {
            var dir = executable
            for level in 0..<5 {
                guard let slash = dir.lastIndex(of: "/") else { break }
                dir = String(dir[..<slash])
                if level == 1 { candidates.append(dir + "/share/statefn/migrations") }
                candidates.append(dir + "/migrations")
            }
        }
        return candidates
    }
}

func absolutePath(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
    guard getcwd(&buffer, buffer.count) != nil else { return path }
    let cwd = string(fromNulTerminated: buffer)
    return path == "." ? cwd : cwd + "/" + (path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
}

/// Whether every existing directory on the way to `path` lets other users through (o+x).
func othersCanTraverse(_ path: String) -> Bool {
    var prefix = ""
    for component in path.split(separator: "/") {
        prefix += "/" + component
        var info = stat()
        guard stat(prefix, &info) == 0 else { return true }  // what does not exist yet is created traversable
        if info.st_mode & S_IXOTH == 0 { return false }
    }
    return true
}

func isDirectory(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
}

func executablePath() -> String? {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX))
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { return nil }
    return string(fromNulTerminated: buffer)
}

func string(fromNulTerminated buffer: [CChar]) -> String {
    String(decoding: buffer.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
